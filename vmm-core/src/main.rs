//! `viaduct`: the VMM binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Viaduct: a compact KVM VMM whose disks and NICs are served by vhost-user daemons.
///
/// Booting guests is not implemented yet (see docs/status.md). What works today:
///
///   viaduct check-kvm      # open /dev/kvm, create a VM and a vCPU, list capabilities
///   viaduct sriov list     # SR-IOV PFs and VFs; see `viaduct sriov --help`
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
    /// Manage SR-IOV virtual functions: create, configure (MAC, VLAN, spoof
    /// checking...), bind to vfio-pci for passthrough.
    ///
    /// Example: viaduct sriov create --pf enp1s0 --num-vfs 2 &&
    ///          viaduct sriov set --pf enp1s0 --vf 0 --mac 02:00:00:00:00:01 --vlan 100 --spoofchk on &&
    ///          viaduct sriov bind --vf 0000:01:10.0
    #[command(subcommand, verbatim_doc_comment)]
    Sriov(vfio_passthrough::sriov::cli::SriovCommand),
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
        Some(Command::Sriov(cmd)) => {
            let sysfs = vfio_passthrough::sriov::pci::Sysfs::default();
            match vfio_passthrough::sriov::cli::run(&cmd, &sysfs, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("viaduct sriov: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            eprintln!(
                "viaduct: booting a guest is not implemented yet (issue 5); try `viaduct check-kvm`"
            );
            ExitCode::from(2)
        }
    }
}
