//! virtio-bindings' constants are all `u32`; the fields they go in are often
//! a byte or a half-word. These narrow a constant at compile time: used in a
//! `const` item, a value that does not fit stops the build instead of being
//! truncated silently.

/// `v` as a byte; fails the build (or panics, outside const context) if it
/// does not fit.
pub const fn u8_of(v: u32) -> u8 {
    assert!(v <= u8::MAX as u32, "constant does not fit in a u8");
    // Cannot truncate: checked just above.
    #[allow(clippy::cast_possible_truncation)]
    let b = v as u8;
    b
}

/// `v` as a half-word; fails the build (or panics, outside const context)
/// if it does not fit.
pub const fn u16_of(v: u32) -> u16 {
    assert!(v <= u16::MAX as u32, "constant does not fit in a u16");
    // Cannot truncate: checked just above.
    #[allow(clippy::cast_possible_truncation)]
    let h = v as u16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_that_fit_are_kept() {
        assert_eq!(u8_of(0xff), 0xff);
        assert_eq!(u16_of(0xffff), 0xffff);
    }

    #[test]
    #[should_panic(expected = "does not fit in a u8")]
    fn a_byte_that_does_not_fit_panics() {
        let _ = u8_of(std::hint::black_box(0x100));
    }

    #[test]
    #[should_panic(expected = "does not fit in a u16")]
    fn a_half_word_that_does_not_fit_panics() {
        let _ = u16_of(std::hint::black_box(0x1_0000));
    }
}
