//! Host-KVM smoke test: a hand-assembled 32-bit guest writes to the serial
//! port and to two ioeventfd addresses (port and MMIO), then pulls the
//! i8042 reset line. Runs on the CI host, whose KVM cannot boot Linux but
//! runs tiny guests (see shared/testbed.md).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::boot::{BootEntry, BootMode};
use vmm_core::config::MemoryConfig;
use vmm_core::event_loop;
use vmm_core::lifecycle::StopReason;
use vmm_core::vm::Vm;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const CODE: u64 = 0x1000;
const DOORBELL_PORT: u16 = 0x510;
const DOORBELL_MMIO: u32 = 0xd000_0000;

/// The guest, flat 32-bit protected mode.
fn guest_code() -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"OK from the guest\n" {
        c.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, DOORBELL_PORT
    c.extend_from_slice(&DOORBELL_PORT.to_le_bytes());
    c.extend_from_slice(&[0xee, 0xee]); // out dx, al (twice)
    c.extend_from_slice(&[0xb8, 0x78, 0x56, 0x34, 0x12]); // mov eax, 0x12345678
    c.push(0xa3); // mov [DOORBELL_MMIO], eax
    c.extend_from_slice(&DOORBELL_MMIO.to_le_bytes());
    c.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    c
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tiny_guest_talks_to_serial_and_ioeventfds_then_resets() {
    let vm = Vm::new(MemoryConfig {
        size: 64 << 20,
        hugepages: false,
    })
    .expect("host KVM creates a VM");
    let console = Capture::default();
    vm.devices()
        .add_platform_devices(Some(Box::new(console.clone())))
        .unwrap();
    vm.ram
        .mem
        .write_slice(&guest_code(), GuestAddress(CODE))
        .unwrap();
    let port_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let mmio_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.fd
        .register_ioevent(
            &port_evt,
            &IoEventAddress::Pio(u64::from(DOORBELL_PORT)),
            NoDatamatch,
        )
        .unwrap();
    vm.fd
        .register_ioevent(
            &mmio_evt,
            &IoEventAddress::Mmio(u64::from(DOORBELL_MMIO)),
            0x1234_5678u32,
        )
        .unwrap();
    let entry = BootEntry {
        rip: CODE,
        mode: BootMode::Pvh32 { start_info: 0 },
    };
    let vcpus = vm.create_vcpus(1, entry).unwrap();
    for v in vcpus {
        v.spawn().unwrap();
    }
    let lc = vm.lifecycle.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        lc.request_stop(StopReason::Fatal("smoke guest timed out".into()));
    });
    let sources = event_loop::Sources {
        serial: None,
        api: None,
        backends: vmm_core::backends::Backends::new(Vec::new(), event_loop::TOKEN_BACKENDS),
    };
    event_loop::run(&vm.lifecycle, sources).unwrap();

    assert_eq!(vm.lifecycle.stop_reason(), Some(StopReason::Reset));
    let out = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out, "OK from the guest\n");
    assert_eq!(port_evt.read().unwrap(), 2, "two port doorbell writes");
    assert_eq!(
        mmio_evt.read().unwrap(),
        1,
        "one matching MMIO doorbell write"
    );
    // A reset the guest did not announce is not a clean exit.
    assert_eq!(vm.lifecycle.outcome().map(|o| o.code), Some(1));
}
