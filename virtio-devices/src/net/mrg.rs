//! Spreading a received frame over guest buffers (`VIRTIO_NET_F_MRG_RXBUF`).
//!
//! With mergeable RX buffers a frame (header included) may fill several
//! descriptor chains; the first chain's header carries `num_buffers`, the
//! count of chains used. Without it the whole frame must fit one chain.

use thiserror::Error;

/// Why a frame cannot be placed in the offered buffers.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpreadError {
    #[error("{needed} bytes do not fit in {available} bytes of rx buffers")]
    NotEnoughRoom { needed: usize, available: usize },
    #[error("first rx buffer of {capacity} bytes cannot hold the {hdr_len}-byte header")]
    HeaderDoesNotFit { capacity: usize, hdr_len: usize },
    #[error("a frame spread over {0} buffers overflows num_buffers")]
    TooManyBuffers(usize),
}

/// Plans how `total` bytes (header + frame) are spread over buffers of the
/// given capacities, taken in order, and returns the bytes written into each
/// buffer used (one entry per chain, all but the last full).
///
/// `mergeable == false` allows one buffer only. The header must sit wholly in
/// the first buffer (where `num_buffers` is written).
pub fn spread<I>(
    total: usize,
    hdr_len: usize,
    capacities: I,
    mergeable: bool,
) -> Result<Vec<usize>, SpreadError>
where
    I: IntoIterator<Item = usize>,
{
    let mut used = Vec::new();
    let mut left = total;
    let mut available = 0usize;
    let limit = if mergeable { usize::from(u16::MAX) } else { 1 };
    for cap in capacities.into_iter().take(limit) {
        if used.is_empty() && cap < hdr_len {
            return Err(SpreadError::HeaderDoesNotFit {
                capacity: cap,
                hdr_len,
            });
        }
        available = available.saturating_add(cap);
        let n = left.min(cap);
        used.push(n);
        left -= n;
        if left == 0 {
            return Ok(used);
        }
    }
    if mergeable && used.len() >= limit {
        return Err(SpreadError::TooManyBuffers(used.len()));
    }
    Err(SpreadError::NotEnoughRoom {
        needed: total,
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frame_uses_one_buffer() {
        assert_eq!(spread(12 + 60, 12, [1526, 1526], true), Ok(vec![72]));
        assert_eq!(spread(72, 12, [72], false), Ok(vec![72]));
    }

    #[test]
    fn large_frame_fills_buffers_in_order() {
        let total = 12 + 65_000;
        let caps = std::iter::repeat_n(4096, 20);
        let used = spread(total, 12, caps, true).unwrap();
        assert_eq!(used.len(), total.div_ceil(4096));
        assert!(used[..used.len() - 1].iter().all(|&n| n == 4096));
        assert_eq!(used.iter().sum::<usize>(), total);
    }

    #[test]
    fn uneven_buffers() {
        assert_eq!(
            spread(3000, 12, [1000, 500, 4000, 10], true),
            Ok(vec![1000, 500, 1500])
        );
    }

    #[test]
    fn without_mrg_the_frame_must_fit_one_buffer() {
        assert_eq!(
            spread(3000, 12, [1500, 1500], false),
            Err(SpreadError::NotEnoughRoom {
                needed: 3000,
                available: 1500
            })
        );
    }

    #[test]
    fn not_enough_buffers_is_reported() {
        assert_eq!(
            spread(5000, 12, [1500, 1500], true),
            Err(SpreadError::NotEnoughRoom {
                needed: 5000,
                available: 3000
            })
        );
        assert_eq!(
            spread(10, 12, std::iter::empty(), true),
            Err(SpreadError::NotEnoughRoom {
                needed: 10,
                available: 0
            })
        );
    }

    #[test]
    fn header_must_fit_first_buffer() {
        assert_eq!(
            spread(100, 12, [8, 1000], true),
            Err(SpreadError::HeaderDoesNotFit {
                capacity: 8,
                hdr_len: 12
            })
        );
    }

    #[test]
    fn zero_sized_buffers_are_consumed_without_progress() {
        assert_eq!(spread(100, 12, [50, 0, 50], true), Ok(vec![50, 0, 50]));
    }
}
