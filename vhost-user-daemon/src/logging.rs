//! Structured logs (`event=... key=value`) on stderr with microsecond
//! timestamps; `RUST_LOG` overrides `--log-level`.

/// Installs the logger once, at start-up.
pub fn init(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format_timestamp_micros()
        .init();
}
