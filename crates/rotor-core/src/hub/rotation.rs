//! Hellos and what they trigger: confirmation of the latest generation,
//! rotation to the next (I2: only after proof of the latest), `ack` when
//! nothing is due, and the resend of the same key to a node that missed it (I4).

use std::net::SocketAddr;

use super::{CROSSING_HOLDOFF_MS, NodeState, Shared};
use crate::action::{Action, DropReason, Event, PeerId, Time};
use crate::generation::Generation;
use crate::wire::{Datagram, Message};

/// `key` for `latest`, sealed under `prev` (the generation the node holds),
/// and whether its counter starts a reservation block (the caller marks the
/// node dirty, see [`crate::generation::TX_RESERVE`]).
fn key_message(latest: &Generation, prev: &mut Generation, nat: bool) -> (Vec<u8>, bool) {
    let (counter, reserve) = prev.next_counter();
    let datagram = Message::Key {
        spi: prev.spi,
        counter,
        init_reply: None,
        generation: latest.number,
        gen_spi: latest.spi,
        secret: latest.secret.clone(),
        nat,
    }
    .seal(&prev.ctl_h2n);
    (datagram, reserve)
}

impl Shared {
    /// A hello under one of node `id`'s generation SPIs, received from
    /// `from`. Only the latest and previous generations are answered; one
    /// replaced and awaiting deletion is stale. The freshest hello yet sets
    /// where the node is (see [`super::path`]) before it is answered.
    pub(super) fn hello(
        &mut self,
        now: Time,
        id: PeerId,
        n: &mut NodeState,
        from: SocketAddr,
        dg: &Datagram<'_>,
    ) -> Result<(), DropReason> {
        let spi = dg.header.spi;
        let is_latest = n.latest.as_ref().is_some_and(|g| g.spi == spi);
        let is_previous = n.previous.as_ref().is_some_and(|g| g.spi == spi);
        let g = match (is_latest, is_previous) {
            (true, _) => n.latest.as_mut(),
            (_, true) => n.previous.as_mut(),
            _ => None,
        }
        .ok_or(DropReason::StaleGeneration)?;
        if !g.rx_window.check(dg.header.counter) {
            return Err(DropReason::Replay);
        }
        let Message::Hello {
            generation: claimed,
            rotate,
            source,
            ..
        } = dg.open(&g.ctl_n2h).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if claimed != g.number {
            return Err(DropReason::StaleGeneration);
        }
        // The window (and last_seen) change with every hello but are not
        // written for that alone: the record is written, window included,
        // when the hello changes durable state (confirmation, rotation, a
        // new counter block); a hello accepted without a write may be
        // accepted once more after a restart, which is harmless (see
        // `crate::persist`: an ack, the same key again, a due rotation).
        g.rx_window.commit(dg.header.counter);
        let number = g.number;
        n.last_seen = Some(now);
        self.heard_from(
            now,
            id,
            n,
            from,
            Some((number, dg.header.counter)),
            Some(source),
        );
        if is_latest {
            self.in_sync(now, id, n, rotate);
        } else if !n.crossing_spared && now.since(n.key_sent_at) < CROSSING_HOLDOFF_MS {
            n.crossing_spared = true;
        } else {
            self.resend(id, n);
        }
        Ok(())
    }

    /// A message under the latest generation: confirm it, rotate if due.
    fn in_sync(&mut self, now: Time, id: PeerId, n: &mut NodeState, requested: bool) {
        if !n.confirmed {
            // Written lazily, like the window: a restart that lost it awaits
            // the confirmation again, and the next hello under the latest
            // generation (a replayed one proves as much, I2) gives it. The
            // init exception below changes the chain and is written at once.
            n.confirmed = true;
            let (number, spi) = n
                .latest
                .as_ref()
                .map(|g| (g.number, g.spi))
                .unwrap_or_default();
            self.actions.push_back(Action::Event(Event::Confirmed {
                peer: id,
                generation: number,
            }));
            if n.previous.is_none() {
                // The init exception: generation 1 is sent on from its
                // confirmation; the chain it replaced can go now, and so can
                // the init reply (the node has it).
                n.last_init = None;
                self.mark(id, n);
                self.set_outbound(id, n, Some(spi));
                for s in std::mem::take(&mut n.superseded) {
                    self.retire(now, id, s, true);
                }
            }
        }
        if n.force_rotate || requested || now >= n.rotate_at {
            self.rotate(now, id, n);
        } else {
            self.send_ack(id, n);
        }
    }

    /// Tells the node it is in sync, under the latest generation.
    fn send_ack(&mut self, id: PeerId, n: &mut NodeState) {
        if let Some(g) = n.latest.as_mut() {
            let (counter, reserve) = g.next_counter();
            let datagram = Message::Ack {
                spi: g.spi,
                counter,
                generation: g.number,
                nat: n.nat,
            }
            .seal(&g.ctl_h2n);
            if reserve {
                self.mark(id, n);
            }
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
    }

    /// Creates N+1 (the node proved N), switches outbound to N, retires N-1,
    /// and sends N+1 protected under N. Does nothing without a chain.
    pub(super) fn rotate(&mut self, now: Time, id: PeerId, n: &mut NodeState) {
        let Some(number) = n.latest.as_ref().map(|g| g.number + 1) else {
            return;
        };
        let new = self.new_generation(id, number);
        let old_prev = n.previous.take();
        n.previous = n.latest.take();
        // A generation whose outbound SA the kernel lost after it was used
        // (`kernel_lost`) is never sent on again: stay blocked, and rotate
        // once more at the next proof, onto a generation with a fresh one.
        let out_missing = n.previous.as_ref().is_some_and(|g| g.out_missing);
        let cur_spi = n
            .previous
            .as_ref()
            .filter(|g| !g.out_missing)
            .map(|g| g.spi);
        self.set_outbound(id, n, cur_spi);
        if let Some(p) = old_prev {
            self.retire(now, id, p.spi, !p.out_missing);
        }
        let (new_number, new_spi) = (new.number, new.spi);
        n.latest = Some(new);
        n.confirmed = false;
        n.force_rotate = out_missing;
        self.mark(id, n);
        n.rotations += 1;
        n.key_sent_at = now;
        n.crossing_spared = false;
        n.rotate_at = now.plus_ms(n.rotate_interval_ms);
        self.push_rotation(n.rotate_at, id);
        if let (Some(latest), Some(prev)) = (n.latest.as_ref(), n.previous.as_mut()) {
            // Marked dirty above whatever the counter.
            let (datagram, _) = key_message(latest, prev, n.nat);
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
        self.actions.push_back(Action::Event(Event::Rotated {
            peer: id,
            generation: new_number,
            spi: new_spi,
            tx_spi: cur_spi.unwrap_or(0),
        }));
    }

    /// A message under the previous generation: the node missed the latest
    /// key; send the same key again (I4), protected under the previous one.
    /// Changes no durable state but the `resends` statistic, which is
    /// written lazily (with the next write; a crash may lose a few), and the
    /// send counter (written when it starts a new block).
    fn resend(&mut self, id: PeerId, n: &mut NodeState) {
        let (Some(latest), Some(prev)) = (n.latest.as_ref(), n.previous.as_mut()) else {
            return;
        };
        let (generation, spi) = (latest.number, latest.spi);
        let (datagram, reserve) = key_message(latest, prev, n.nat);
        if reserve {
            self.mark(id, n);
        }
        n.resends += 1;
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions.push_back(Action::Event(Event::Resent {
            peer: id,
            generation,
            spi,
        }));
    }
}
