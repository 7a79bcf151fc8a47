//! The `switchboard` binary. Its subcommands (`serve`, `dev`, `cluster`, `call`, `events`)
//! arrive with the cluster-node issue.

fn main() -> std::process::ExitCode {
    eprintln!("switchboard: the node is not built yet; see README.md");
    std::process::ExitCode::from(2)
}
