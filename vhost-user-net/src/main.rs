//! vhost-user-net: not implemented yet (issue 4).

fn main() {
    eprintln!("vhost-user-net: not implemented yet; see docs/status.md");
    std::process::exit(2);
}
