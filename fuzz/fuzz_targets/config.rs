//! Bytes → the node's config file parsing (`ServeArgs::parse_file`, JSON) → merging with flags
//! → `NodeConfig::validate`; and the option parsers that take free text (`--initial-cluster`,
//! `--pod-name`).
//!
//! Promises checked: no input panics; whatever resolves is valid, and the flags win over the
//! file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use node::config::{ServeArgs, node_id_from_pod_name, parse_initial_cluster};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(members) = parse_initial_cluster(text) {
            for addr in members.values() {
                let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
                assert!(
                    matches!(port, Some(Ok(_))),
                    "a member without a port: {addr:?}"
                );
            }
        }
        let _ = node_id_from_pod_name(text);
    }
    let Ok(file) = ServeArgs::parse_file(Path::new("fuzz.json"), data) else {
        return;
    };
    // The file alone, as a node started with `--config` and nothing else.
    if let Ok(config) = ServeArgs::default().resolve_with_file(file.clone()) {
        config.validate().expect("a resolved config is valid");
    }
    // Flags over the file.
    let flags = ServeArgs {
        node_id: Some(7),
        listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7107))),
        data_dir: Some("/var/lib/switchboard".into()),
        ..ServeArgs::default()
    };
    if let Ok(config) = flags.resolve_with_file(file) {
        config.validate().expect("a resolved config is valid");
        assert_eq!(config.node_id, 7, "the flag wins over the file");
        assert_eq!(config.listen.port(), 7107, "the flag wins over the file");
    }
});
