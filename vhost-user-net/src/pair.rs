//! One queue pair (RX vring 2k, TX vring 2k+1) and its TAP queue, driven by
//! its own worker thread: event dispatch to [`crate::rx`] / [`crate::tx`]
//! under each ring's lock, which TAP events it wants (the backend registers
//! them), queue attach/detach, and the optional busy-poll window.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{debug, warn};
use vhost_user_backend::{VringState, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::counters::PairCounters;
use crate::pair_types::{Interest, PairCtx, RX, TX, Virtqueue, Wake};
use crate::rx::{self, RxOutcome, RxState};
use crate::tap::TapQueue;
use crate::tx::{self, TxOutcome, TxScratch};

/// Our vring type.
pub type NetVring = crate::checked_vring::CheckedVring<GuestMemoryAtomic<GuestMemoryMmap>>;

/// The framework's vring state, locked for one pass, is the data paths'
/// virtqueue.
impl<M: GuestAddressSpace> Virtqueue for VringState<M> {
    fn queue(&mut self) -> &mut Queue {
        self.get_queue_mut()
    }

    fn signal_used(&self) -> std::io::Result<()> {
        self.signal_used_queue()
    }
}

/// Runs one data-path pass over `v` under the ring's lock, or answers None
/// when the ring is disabled (SET_VRING_ENABLE 0) or stopped: checked under
/// that lock, which SET_VRING_ENABLE and GET_VRING_BASE take too, so nothing
/// is done on the ring once the frontend has been answered.
fn pass<T>(
    v: &NetVring,
    f: impl FnOnce(&mut VringState<GuestMemoryAtomic<GuestMemoryMmap>>) -> T,
) -> Option<T> {
    let mut guard = v.get_mut();
    if !guard.is_enabled() || !guard.get_queue().ready() {
        return None;
    }
    Some(f(&mut guard))
}

#[derive(Debug)]
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

/// One queue pair of the device.
#[derive(Debug)]
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
    /// Returns the change of TAP events the pair wants from its worker
    /// epoll, if any: the caller applies it and reports the result with
    /// [`QueuePair::registered`].
    #[must_use]
    pub fn handle(&self, wake: Wake, vrings: &[NetVring], ctx: &PairCtx<'_>) -> Option<Interest> {
        let (Some(rxv), Some(txv)) = (vrings.get(RX as usize), vrings.get(TX as usize)) else {
            return None;
        };
        let Ok(mut st) = self.state.lock() else {
            return None;
        };
        let st = &mut *st;
        let (mut rx_on, mut tx_on) = (ring_active(rxv), ring_active(txv));
        if !rx_on && !tx_on {
            let change = self.interest(st, EventSet::empty());
            if ctx.multiqueue && !st.detached {
                // Frames the kernel steers here would sit unread: hand them
                // to the queues still in use.
                match self.tap.set_attached(false) {
                    Ok(()) => st.detached = true,
                    Err(e) => debug!("pair={} event=detach_failed err={e}", self.index),
                }
            }
            return change;
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
                let (tap, counters, scratch) = (&*self.tap, &self.counters.tx, &mut st.tx);
                match pass(txv, |r| {
                    tx::process(r, &mem, tap, ctx.neg, counters, scratch)
                }) {
                    None => {
                        // Disabled since this wake-up began: stop polling it.
                        tx_on = false;
                        st.tx_blocked = false;
                    }
                    Some(Ok(o)) => st.tx_blocked = o == TxOutcome::Blocked,
                    Some(Err(e)) => self.ring_error(st, "tx", &e),
                }
                progressed |= self.counters.tx.packets() != before;
            }
            if wake.rx && rx_on && !st.rx_starved {
                let before = self.counters.rx.packets();
                let (tap, counters, rxst) = (&*self.tap, &self.counters.rx, &mut st.rx);
                match pass(rxv, |r| {
                    rx::process(r, &mem, tap, ctx.neg, counters, rxst, ctx.budget)
                }) {
                    Some(Ok(RxOutcome::NoBuffers)) => st.rx_starved = true,
                    None => rx_on = false,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
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
        self.interest(st, want)
    }

    fn ring_error(&self, st: &mut PairState, dir: &str, e: &virtio_queue::Error) {
        if !st.ring_error_logged {
            warn!("pair={} dir={dir} event=ring_error err={e}", self.index);
            st.ring_error_logged = true;
        }
    }

    /// The change that would make the TAP fd registered for `want`.
    fn interest(&self, st: &PairState, want: EventSet) -> Option<Interest> {
        (st.interest != want).then(|| Interest {
            fd: self.tap.as_raw_fd(),
            from: st.interest,
            to: want,
        })
    }

    /// Records the events the TAP fd is registered for after the caller
    /// applied an [`Interest`] change (empty: not at all).
    pub fn registered(&self, now: EventSet) {
        if let Ok(mut st) = self.state.lock() {
            st.interest = now;
        }
    }
}
