//! vhost-user-blk: not implemented yet (issue 3).

fn main() {
    eprintln!("vhost-user-blk: not implemented yet; see docs/status.md");
    std::process::exit(2);
}
