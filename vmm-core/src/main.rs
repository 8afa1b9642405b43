//! `viaduct`: the VMM binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Viaduct: a compact KVM VMM whose disks and NICs are served by vhost-user daemons.
///
/// Booting guests is not implemented yet (see docs/status.md). What works today:
///
///   viaduct check-kvm      # open /dev/kvm, create a VM and a vCPU, list capabilities
#[derive(Parser, Debug)]
#[command(name = "viaduct", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that this host's KVM can run Viaduct: creates a VM and a vCPU and
    /// prints one `key=value` line per capability. Exit status 0 when usable.
    CheckKvm,
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckKvm) => match vmm_core::kvm_check::check_kvm() {
            Ok(report) => {
                print!("{}", report.render());
                println!("kvm_ok=1");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("viaduct: {:#}", anyhow::Error::from(e));
                println!("kvm_ok=0");
                ExitCode::FAILURE
            }
        },
        None => {
            eprintln!(
                "viaduct: booting a guest is not implemented yet (issue 5); try `viaduct check-kvm`"
            );
            ExitCode::from(2)
        }
    }
}
