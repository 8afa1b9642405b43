//! vCPUs: CPUID, boot registers, exit decoding and the run loop.

pub mod cpuid;
pub mod exit;
pub mod exit_stats;
pub mod pause;
pub mod regs;
pub mod vcpu;
