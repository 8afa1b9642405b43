//! One queue pair (RX vring 2k, TX vring 2k+1) and its TAP queue, driven by
//! its own worker thread: event dispatch, TAP polling on/off, queue
//! attach/detach, and the optional busy-poll window.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vhost_user_backend::{VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::NetBackend;
use crate::counters::PairCounters;
use crate::rx::{self, RxOutcome, RxState};
use crate::tap::TapQueue;
use crate::tx::{self, Negotiated, TxOutcome, TxScratch};

/// The worker epoll of one queue pair.
pub type PairEpoll = VringEpollHandler<Arc<NetBackend>>;
/// Our vring type.
pub type NetVring = crate::checked_vring::CheckedVring<GuestMemoryAtomic<GuestMemoryMmap>>;

/// Index of the RX / TX vring within a worker's vrings.
const RX: u16 = 0;
const TX: u16 = 1;

/// What one wake-up should look at.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    pub rx: bool,
    pub tx: bool,
}

impl Wake {
    /// Maps a worker event to the directions it concerns.
    pub fn from_event(device_event: u16, evset: EventSet, tap_token: u64) -> Wake {
        match device_event {
            RX => Wake {
                rx: true,
                tx: false,
            },
            TX => Wake {
                rx: false,
                tx: true,
            },
            t if u64::from(t) == tap_token => Wake {
                rx: evset.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR),
                tx: evset.contains(EventSet::OUT),
            },
            _ => Wake { rx: true, tx: true },
        }
    }
}

struct PairState {
    rx: RxState,
    tx: TxScratch,
    /// The guest had no RX buffers: TAP not polled for IN until an RX kick.
    rx_starved: bool,
    /// The TAP pushed back: poll it for OUT.
    tx_blocked: bool,
    /// Events the TAP fd is currently registered for (empty: not at all).
    interest: EventSet,
    detached: bool,
    ring_error_logged: bool,
}

/// Per-connection context every wake-up needs.
pub struct PairCtx<'a> {
    pub mem: &'a GuestMemoryAtomic<GuestMemoryMmap>,
    pub neg: Negotiated,
    pub epoll: Option<Arc<PairEpoll>>,
    pub tap_token: u64,
    pub multiqueue: bool,
    pub poll: Duration,
    pub budget: usize,
}

/// One queue pair of the device.
pub struct QueuePair {
    index: usize,
    tap: Arc<TapQueue>,
    counters: Arc<PairCounters>,
    state: Mutex<PairState>,
}

fn ring_active(v: &NetVring) -> bool {
    let g = v.get_ref();
    g.is_enabled() && g.get_queue().ready()
}

impl QueuePair {
    pub fn new(index: usize, tap: Arc<TapQueue>, counters: Arc<PairCounters>) -> Self {
        Self {
            index,
            tap,
            counters,
            state: Mutex::new(PairState {
                rx: RxState::default(),
                tx: TxScratch::default(),
                rx_starved: false,
                tx_blocked: false,
                interest: EventSet::empty(),
                detached: false,
                ring_error_logged: false,
            }),
        }
    }

    /// Records whether the TAP queue starts out detached.
    pub fn mark_detached(&self, detached: bool) {
        if let Ok(mut st) = self.state.lock() {
            st.detached = detached;
        }
    }

    /// The pair's TAP queue.
    pub fn tap(&self) -> &TapQueue {
        &self.tap
    }

    /// Handles one worker event. Never fails: a broken ring is logged and
    /// that direction stops until the frontend sets the ring up again.
    pub fn handle(&self, wake: Wake, vrings: &[NetVring], ctx: &PairCtx<'_>) {
        let (Some(rxv), Some(txv)) = (vrings.get(RX as usize), vrings.get(TX as usize)) else {
            return;
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let st = &mut *st;
        let (mut rx_on, mut tx_on) = (ring_active(rxv), ring_active(txv));
        if !rx_on && !tx_on {
            self.set_interest(st, ctx, EventSet::empty());
            if ctx.multiqueue && !st.detached {
                // Frames the kernel steers here would sit unread: hand them
                // to the queues still in use.
                match self.tap.set_attached(false) {
                    Ok(()) => st.detached = true,
                    Err(e) => debug!("pair={} event=detach_failed err={e}", self.index),
                }
            }
            return;
        }
        if st.detached {
            match self.tap.set_attached(true) {
                Ok(()) => st.detached = false,
                Err(e) => warn!("pair={} event=attach_failed err={e}", self.index),
            }
        }
        let mem = ctx.mem.memory();
        let mut wake = wake;
        if wake.rx {
            st.rx_starved = false;
        }
        let deadline = Instant::now() + ctx.poll;
        loop {
            let mut progressed = false;
            if wake.tx && tx_on {
                let before = self.counters.tx.packets();
                match tx::process(txv, &mem, &self.tap, ctx.neg, &self.counters.tx, &mut st.tx) {
                    Ok(TxOutcome::Disabled) => {
                        // Disabled since this wake-up began: stop polling it.
                        tx_on = false;
                        st.tx_blocked = false;
                    }
                    Ok(o) => st.tx_blocked = o == TxOutcome::Blocked,
                    Err(e) => self.ring_error(st, "tx", &e),
                }
                progressed |= self.counters.tx.packets() != before;
            }
            if wake.rx && rx_on && !st.rx_starved {
                let before = self.counters.rx.packets();
                match rx::process(
                    rxv,
                    &mem,
                    &self.tap,
                    ctx.neg,
                    &self.counters.rx,
                    &mut st.rx,
                    ctx.budget,
                ) {
                    Ok(RxOutcome::NoBuffers) => st.rx_starved = true,
                    Ok(RxOutcome::Disabled) => rx_on = false,
                    Ok(_) => {}
                    Err(e) => {
                        st.rx_starved = true;
                        self.ring_error(st, "rx", &e);
                    }
                }
                progressed |= self.counters.rx.packets() != before;
            }
            if ctx.poll.is_zero()
                || (!rx_on && !tx_on)
                || (!progressed && Instant::now() >= deadline)
            {
                break;
            }
            // Busy-poll both directions until the window passes idle.
            wake = Wake { rx: true, tx: true };
            std::hint::spin_loop();
        }
        let mut want = EventSet::empty();
        if rx_on && !st.rx_starved {
            want |= EventSet::IN;
        }
        if tx_on && st.tx_blocked {
            want |= EventSet::OUT;
        }
        self.set_interest(st, ctx, want);
    }

    fn ring_error(&self, st: &mut PairState, dir: &str, e: &virtio_queue::Error) {
        if !st.ring_error_logged {
            warn!("pair={} dir={dir} event=ring_error err={e}", self.index);
            st.ring_error_logged = true;
        }
    }

    /// (Re)registers the TAP fd on the worker epoll for `want`.
    fn set_interest(&self, st: &mut PairState, ctx: &PairCtx<'_>, want: EventSet) {
        if st.interest == want {
            return;
        }
        let Some(epoll) = ctx.epoll.as_ref() else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*self.tap);
        if !st.interest.is_empty() {
            if let Err(e) = epoll.unregister_listener(fd, st.interest, ctx.tap_token) {
                debug!("pair={} event=tap_unregister_failed err={e}", self.index);
            }
            st.interest = EventSet::empty();
        }
        if !want.is_empty() {
            match epoll.register_listener(fd, want, ctx.tap_token) {
                Ok(()) => st.interest = want,
                Err(e) => warn!("pair={} event=tap_register_failed err={e}", self.index),
            }
        }
    }
}

/// Weak references to the worker epolls (the backend must not keep the
/// daemon's handlers alive: they hold the backend).
pub type EpollRefs = Vec<Weak<PairEpoll>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_directions() {
        let w = Wake::from_event(0, EventSet::IN, 3);
        assert!(w.rx && !w.tx);
        let w = Wake::from_event(1, EventSet::IN, 3);
        assert!(!w.rx && w.tx);
        let w = Wake::from_event(3, EventSet::OUT, 3);
        assert!(!w.rx && w.tx, "tap writable again: resume tx");
        let w = Wake::from_event(3, EventSet::IN | EventSet::OUT, 3);
        assert!(w.rx && w.tx);
        let w = Wake::from_event(3, EventSet::HANG_UP, 3);
        assert!(w.rx && !w.tx);
    }
}
