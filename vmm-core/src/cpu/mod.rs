//! vCPUs: CPUID, boot registers, exit decoding and the run loop.

pub mod cpuid;
pub mod exit;
pub mod regs;
pub mod vcpu;
