//! VFIO configuration-space virtualization (`vfio_passthrough::config`):
//! a fabricated device (mostly an endpoint header with a capability chain
//! the fuzzer shapes, sometimes raw bytes) with arbitrary BAR sizes, then
//! guest reads and writes of any size and offset. Nothing may panic, and
//! nothing may be forwarded to the device outside its config region.

#![no_main]

use std::cell::RefCell;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vfio_passthrough::config::{ConfigSpace, VirtualConfig};

struct Fake {
    bytes: RefCell<Vec<u8>>,
}

impl ConfigSpace for Fake {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let b = self.bytes.borrow();
        let o = usize::try_from(offset).expect("offset fits");
        let src = b
            .get(o..o + data.len())
            .unwrap_or_else(|| panic!("read forwarded outside the region: {o:#x}+{}", data.len()));
        data.copy_from_slice(src);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let mut b = self.bytes.borrow_mut();
        let o = usize::try_from(offset).expect("offset fits");
        let dst = b
            .get_mut(o..o + data.len())
            .unwrap_or_else(|| panic!("write forwarded outside the region: {o:#x}+{}", data.len()));
        dst.copy_from_slice(data);
    }
}

#[derive(Arbitrary, Debug)]
struct Cap {
    id: u8,
    len: u8,
    body: [u8; 12],
}

#[derive(Arbitrary, Debug)]
enum Access {
    Read { offset: u16, len: u8 },
    Write { offset: u16, data: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    extended: bool,
    raw: Option<Vec<u8>>,
    bars: [u32; 6],
    bar_sizes: [u8; 6],
    caps: Vec<Cap>,
    ext_caps: Vec<(u16, u8)>,
    accesses: Vec<Access>,
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(off..off + v.len()) {
        d.copy_from_slice(v);
    }
}

fuzz_target!(|input: Input| {
    let size = if input.extended { 4096 } else { 256 };
    let mut b = vec![0u8; size];
    if let Some(raw) = &input.raw {
        let n = raw.len().min(size);
        b[..n].copy_from_slice(&raw[..n]);
    } else {
        put(&mut b, 0, &0x10c9_8086u32.to_le_bytes());
        put(&mut b, 6, &0x0010u16.to_le_bytes());
        for (i, v) in input.bars.iter().enumerate() {
            put(&mut b, 0x10 + 4 * i, &v.to_le_bytes());
        }
        // A capability chain from 0x40, 16 bytes apart, ids from the input.
        let caps: Vec<_> = input.caps.iter().take(12).collect();
        if !caps.is_empty() {
            b[0x34] = 0x40;
        }
        for (i, c) in caps.iter().enumerate() {
            let at = 0x40 + 16 * i;
            let next = if i + 1 < caps.len() { (at + 16) as u8 } else { c.len };
            put(&mut b, at, &[c.id, next]);
            put(&mut b, at + 2, &c.body);
        }
        if size == 4096 {
            for (i, (id, step)) in input.ext_caps.iter().take(16).enumerate() {
                let at = 0x100 + 0x40 * i;
                let next = (at + 0x40 + usize::from(*step % 4)) as u32;
                let hdr = u32::from(*id) | 1 << 16 | next << 20;
                put(&mut b, at, &hdr.to_le_bytes());
            }
        }
    }
    let sizes = input
        .bar_sizes
        .map(|s| if s == 0 { 0 } else { 1u64 << (s % 40) });
    let dev = Fake {
        bytes: RefCell::new(b),
    };
    let Ok(mut cfg) = VirtualConfig::new(&dev, sizes, size as u64) else {
        return;
    };
    let mut buf = [0u8; 8];
    for a in input.accesses.into_iter().take(256) {
        match a {
            Access::Read { offset, len } => {
                let n = usize::from(len % 9);
                cfg.read(&dev, u64::from(offset % 0x1100), &mut buf[..n]);
            }
            Access::Write { offset, data } => {
                let n = data.len().min(8);
                let _ = cfg.write(&dev, u64::from(offset % 0x1100), &data[..n]);
            }
        }
    }
});
