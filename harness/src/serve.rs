//! The one `switchboard serve` command line. It produces arguments and environment, not a
//! process: the caller picks the program that runs them (the binary itself, or `ip netns exec`
//! in front of it), the command type (std or tokio, which converts from std) and the stdio.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Log filter of nodes started by tests and drills: `$SWITCHBOARD_TEST_LOG`, else quiet.
pub fn test_log_filter() -> String {
    std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn,openraft=error".to_owned())
}

/// `--initial-cluster` of the given voters: `1=host:port,2=host:port`.
pub fn initial_cluster<A: Display>(members: impl IntoIterator<Item = (u64, A)>) -> String {
    members
        .into_iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The arguments of one `switchboard serve`. They start with `serve --node-id N`, which people
/// match on to find a node's process (`pkill -f "serve --node-id 1 "`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeCommand {
    node_id: u64,
    listen: String,
    data_dir: PathBuf,
    advertise: Option<String>,
    http_listen: Option<String>,
    cluster_id: Option<String>,
    initial_cluster: Option<String>,
    exit_with_parent: bool,
    token_keys: Option<PathBuf>,
    insecure: bool,
    extra_args: Vec<OsString>,
    log_filter: Option<String>,
    env: Vec<(OsString, OsString)>,
}

impl ServeCommand {
    /// A node with its id, gRPC listen address and data directory; everything else defaults
    /// as `serve` defaults it (and the environment is inherited).
    pub fn new(node_id: u64, listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            listen: listen.into(),
            data_dir: data_dir.into(),
            advertise: None,
            http_listen: None,
            cluster_id: None,
            initial_cluster: None,
            exit_with_parent: false,
            token_keys: None,
            insecure: false,
            extra_args: Vec::new(),
            log_filter: None,
            env: Vec::new(),
        }
    }

    /// `--advertise`: where peers and clients reach the node, when not at `listen`.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// `--http-listen` (by default `serve` takes the gRPC port + 1000).
    pub fn http_listen(mut self, addr: impl Into<String>) -> Self {
        self.http_listen = Some(addr.into());
        self
    }

    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = Some(id.into());
        self
    }

    /// `--initial-cluster` (see [`initial_cluster`]): the node bootstraps with these voters
    /// when its data directory is fresh. Without it, a fresh node waits to be added.
    pub fn initial_cluster(mut self, members: impl Into<String>) -> Self {
        self.initial_cluster = Some(members.into());
        self
    }

    /// `--exit-with-parent`: the node stops when the process that started it goes away.
    pub fn exit_with_parent(mut self) -> Self {
        self.exit_with_parent = true;
        self
    }

    /// `--token-keys`: the key set that verifies clients' bearer tokens.
    pub fn token_keys(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_keys = Some(path.into());
        self
    }

    /// `--insecure`: plaintext, and no authentication unless `token_keys` is given too.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Further flags, after the ones above (`serve` refuses a flag given twice).
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.extra_args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets `RUST_LOG` for the node (else it inherits the caller's).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = Some(filter.into());
        self
    }

    /// Sets one more environment variable for the node (the drills' disk faults put their
    /// `LD_PRELOAD` fault shim and its control file here).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Every argument after the program, starting with `serve`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--node-id".into(),
            self.node_id.to_string().into(),
            "--listen".into(),
            self.listen.clone().into(),
        ];
        let mut flag = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                args.push(name.into());
                args.push(value.into());
            }
        };
        flag("--advertise", &self.advertise);
        flag("--http-listen", &self.http_listen);
        flag("--cluster-id", &self.cluster_id);
        flag("--initial-cluster", &self.initial_cluster);
        args.push("--data-dir".into());
        args.push(self.data_dir.clone().into());
        if let Some(path) = &self.token_keys {
            args.push("--token-keys".into());
            args.push(path.clone().into());
        }
        if self.insecure {
            args.push("--insecure".into());
        }
        if self.exit_with_parent {
            args.push("--exit-with-parent".into());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Appends the arguments to `command` and sets the environment; `command` runs the
    /// binary, or a wrapper that runs it (`ip netns exec NS switchboard`).
    pub fn configure<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.args(self.args());
        if let Some(filter) = &self.log_filter {
            command.env("RUST_LOG", filter);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// `binary serve ...`, ready to spawn (`tokio::process::Command::from` takes it too).
    pub fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        self.configure(&mut command);
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(serve: &ServeCommand) -> Vec<String> {
        serve
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_minimal_node_gets_id_listen_and_data_dir_only() {
        let serve = ServeCommand::new(1, "127.0.0.1:7101", "/tmp/sb/node-1");
        assert_eq!(
            args(&serve),
            [
                "serve",
                "--node-id",
                "1",
                "--listen",
                "127.0.0.1:7101",
                "--data-dir",
                "/tmp/sb/node-1"
            ]
        );
    }

    #[test]
    fn every_option_becomes_its_flag_and_extra_args_come_last() {
        let serve = ServeCommand::new(3, "10.0.0.3:7100", "/d/node-3")
            .advertise("10.0.0.3:7200")
            .http_listen("10.0.0.3:8100")
            .cluster_id("chaos")
            .initial_cluster("1=a:1,2=b:2,3=c:3")
            .exit_with_parent()
            .extra_args(["--heartbeat-ms=50", "--election-timeout-min-ms=200"]);
        assert_eq!(
            args(&serve),
            [
                "serve",
                "--node-id",
                "3",
                "--listen",
                "10.0.0.3:7100",
                "--advertise",
                "10.0.0.3:7200",
                "--http-listen",
                "10.0.0.3:8100",
                "--cluster-id",
                "chaos",
                "--initial-cluster",
                "1=a:1,2=b:2,3=c:3",
                "--data-dir",
                "/d/node-3",
                "--exit-with-parent",
                "--heartbeat-ms=50",
                "--election-timeout-min-ms=200"
            ]
        );
    }

    #[test]
    fn the_command_line_starts_with_serve_and_the_node_id_for_pkill() {
        let line = args(&ServeCommand::new(1, "127.0.0.1:7101", "d").cluster_id("x")).join(" ");
        assert!(line.starts_with("serve --node-id 1 "), "{line}");
    }

    #[test]
    fn a_command_runs_the_binary_with_the_args_and_the_log_filter() {
        let serve = ServeCommand::new(2, "127.0.0.1:7102", "d").log_filter("warn");
        let command = serve.command(Path::new("/bin/switchboard"));
        assert_eq!(command.get_program(), "/bin/switchboard");
        assert_eq!(command.get_args().collect::<Vec<_>>(), serve.args());
        assert_eq!(
            command.get_envs().collect::<Vec<_>>(),
            [(OsStr::new("RUST_LOG"), Some(OsStr::new("warn")))]
        );
    }

    #[test]
    fn extra_environment_reaches_the_command() {
        let command = ServeCommand::new(2, "a:1", "d")
            .env("LD_PRELOAD", "/t/libfault_shim.so")
            .command(Path::new("sb"));
        assert_eq!(
            command.get_envs().collect::<Vec<_>>(),
            [(
                OsStr::new("LD_PRELOAD"),
                Some(OsStr::new("/t/libfault_shim.so"))
            )]
        );
    }

    #[test]
    fn without_a_log_filter_the_environment_is_inherited_untouched() {
        let command = ServeCommand::new(2, "a:1", "d").command(Path::new("sb"));
        assert_eq!(command.get_envs().count(), 0);
    }

    #[test]
    fn a_wrapper_command_gets_the_args_after_its_own() {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", "sb1"])
            .arg("/bin/switchboard");
        ServeCommand::new(1, "a:1", "d").configure(&mut command);
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args[..6],
            [
                "netns",
                "exec",
                "sb1",
                "/bin/switchboard",
                "serve",
                "--node-id"
            ]
        );
    }

    #[test]
    fn initial_cluster_lists_id_equals_address_in_order() {
        assert_eq!(
            initial_cluster([(1, "127.0.0.1:7101"), (2, "127.0.0.1:7102")]),
            "1=127.0.0.1:7101,2=127.0.0.1:7102"
        );
        assert_eq!(initial_cluster(Vec::<(u64, &str)>::new()), "");
    }
}
