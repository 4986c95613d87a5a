//! Hellos and what they trigger: confirmation of the latest generation,
//! rotation to the next (I2: only after proof of the latest) through the
//! X25519 ratchet (I9), `ack` when nothing is due, and the resend of the
//! same key to a node that missed it (I4).

use std::net::SocketAddr;

use super::admit::{REQUESTED_ROTATIONS, RESENDS};
use super::{CROSSING_HOLDOFF_MS, NodeState, PendingKey, Shared};
use crate::action::{Action, DropReason, Event, PeerId, Time};
use crate::generation::Generation;
use crate::key_schedule::ratchet_secret;
use crate::wire::{Datagram, Message};

/// `key` for `latest` (whose ratchet parts are `pending`), sealed under
/// `prev` (the generation the node holds), with the hub's NAT verdict, and
/// whether its counter starts a reservation block (the caller marks the
/// node dirty, see [`crate::generation::TX_RESERVE`]).
fn key_message(
    latest: &Generation,
    prev: &mut Generation,
    pending: &PendingKey,
    nat: bool,
) -> (Vec<u8>, bool) {
    let (counter, reserve) = prev.next_counter();
    let datagram = Message::Key {
        spi: prev.spi,
        counter,
        init_reply: None,
        generation: latest.number,
        gen_spi: latest.spi,
        secret: pending.random.clone(),
        hub_share: pending.hub_share,
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
            share,
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
            // The share is the node's for the step out of the latest
            // generation (the same in every hello under it): kept for the
            // next rotation, which may come from a timer. Not durable on its
            // own: a restored hub without it rotates at the next hello.
            n.node_share = share;
            self.in_sync(now, id, n, rotate, dg.header.counter);
        } else if n.confirmed {
            // The node proved it holds the latest generation: a hello under
            // the previous one is a late copy, and needs no answer.
        } else if n
            .pending
            .as_ref()
            .is_none_or(|p| p.hub_share != [0; 32] && p.node_share != share)
        {
            // The latest generation was derived for a share the node no
            // longer has (its state is older than our key: a record of a
            // version without the ratchet), or we lack what its key message
            // carried: the node cannot derive it from any resend. Replace it.
            self.reissue(now, id, n, share);
        } else if !n.crossing_spared && now.since(n.key_sent_at) < CROSSING_HOLDOFF_MS {
            n.crossing_spared = true;
        } else if n.resend_bucket.take(now, RESENDS) {
            self.resend(id, n);
        } else {
            return Err(DropReason::RateLimited);
        }
        Ok(())
    }

    /// A hello (counter `hello`) under the latest generation: confirm it,
    /// rotate if due, else acknowledge that hello.
    fn in_sync(&mut self, now: Time, id: PeerId, n: &mut NodeState, requested: bool, hello: u64) {
        if !n.confirmed {
            // Written lazily, like the window: a restart that lost it awaits
            // the confirmation again, and the next hello under the latest
            // generation (a replayed one proves as much, I2) gives it. The
            // init exception below changes the chain and is written at once.
            n.confirmed = true;
            // The node derived the latest generation: no resend will be
            // needed, and the hub's random value goes.
            n.pending = None;
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
        // A rotation only the node asks for is within its budget; one that
        // is due anyway costs none.
        let due = n.force_rotate || now >= n.rotate_at;
        let granted = due || (requested && n.rotate_bucket.take(now, REQUESTED_ROTATIONS));
        if requested && !granted {
            self.drop_reason(DropReason::RotationDeferred, Some(id));
        }
        if !(granted && self.rotate(now, id, n)) {
            self.send_ack(id, n, hello);
        }
    }

    /// Tells the node it is in sync, under the latest generation, in answer
    /// to its hello with counter `hello`.
    fn send_ack(&mut self, id: PeerId, n: &mut NodeState, hello: u64) {
        if let Some(g) = n.latest.as_mut() {
            let (counter, reserve) = g.next_counter();
            let datagram = Message::Ack {
                spi: g.spi,
                counter,
                generation: g.number,
                hello,
                nat: n.nat,
            }
            .seal(&g.ctl_h2n);
            if reserve {
                self.mark(id, n);
            }
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
    }

    /// Whether the rotation to generation `number` is an X25519 ratchet
    /// step (see `HubConfig::ratchet_every`).
    fn is_ratchet_step(&self, number: u64) -> bool {
        number.is_multiple_of(self.ratchet_every)
    }

    /// Generation `number` of node `id`: a fresh random value and SPI, and,
    /// if the rotation is a ratchet step, the X25519 result of the node's
    /// `node_share` and the hub's share of the epoch (otherwise both shares
    /// are zero in the derivation and the `key` message); its SAs
    /// installed. `None` (and a counted `BadEphemeral` drop) when the share
    /// contributes nothing to the X25519 result.
    fn ratchet_generation(
        &mut self,
        now: Time,
        id: PeerId,
        number: u64,
        node_share: &[u8; 32],
    ) -> Option<(Generation, PendingKey)> {
        let (dh, hub_share, node_share) = if self.is_ratchet_step(number) {
            let step = self
                .epoch
                .get(now, self.ratchet_epoch_ms, &mut self.rng)
                .and_then(|eph| Some((eph.agree(node_share)?, *eph.public())));
            let Some((dh, hub_share)) = step else {
                self.drop_reason(DropReason::BadEphemeral, Some(id));
                return None;
            };
            (dh, hub_share, *node_share)
        } else {
            (zeroize::Zeroizing::new([0; 32]), [0; 32], [0; 32])
        };
        let node_share = &node_share;
        let random = self.random32();
        let spi = self.table.allocate(&mut self.rng, id);
        let secret = ratchet_secret(
            random.expose(),
            &dh,
            self.names.get(id),
            number,
            spi,
            node_share,
            &hub_share,
        );
        drop(dh);
        let g = self.new_generation(id, number, spi, secret);
        let pending = PendingKey {
            random,
            hub_share,
            node_share: *node_share,
        };
        Some((g, pending))
    }

    /// Creates N+1 (the node proved N) through the ratchet, switches
    /// outbound to N, retires N-1, and sends N+1 protected under N. Returns
    /// whether it rotated: not without a chain, and not before the node's
    /// share for the step is known (the node's next hello under N brings it
    /// and rotates then).
    pub(super) fn rotate(&mut self, now: Time, id: PeerId, n: &mut NodeState) -> bool {
        let Some(number) = n.latest.as_ref().map(|g| g.number + 1) else {
            return false;
        };
        if self.retire_queue.len() >= self.retiring_cap {
            // Too many SAs wait for deletion already: rotate once
            // deletions made room, at a later hello.
            if !n.force_rotate {
                n.force_rotate = true;
                self.mark(id, n);
            }
            self.drop_reason(DropReason::RotationDeferred, Some(id));
            return false;
        }
        let share = std::mem::take(&mut n.node_share);
        let Some((new, pending)) = (share != [0; 32] || !self.is_ratchet_step(number))
            .then(|| self.ratchet_generation(now, id, number, &share))
            .flatten()
        else {
            if !n.force_rotate {
                n.force_rotate = true;
                self.mark(id, n);
            }
            return false;
        };
        n.pending = Some(Box::new(pending));
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
        if let (Some(latest), Some(prev), Some(p)) =
            (n.latest.as_ref(), n.previous.as_mut(), n.pending.as_deref())
        {
            // Marked dirty above whatever the counter.
            let (datagram, _) = key_message(latest, prev, p, n.nat);
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
        self.actions.push_back(Action::Event(Event::Rotated {
            peer: id,
            generation: new_number,
            spi: new_spi,
            tx_spi: cur_spi.unwrap_or(0),
        }));
        true
    }

    /// A node owed a rotation: rotated now if it proved the latest
    /// generation; else that generation's key is sent again, which a node
    /// holding it answers at once with a hello under it (the proof, so the
    /// rotation follows), and a node without it adopts. Either way the
    /// rotation is one round trip away, not the node's next hello: a hub
    /// restored from its records has usually not seen the confirmation,
    /// which is written lazily. Returns whether it rotated.
    pub(super) fn rotate_or_ask(&mut self, now: Time, id: PeerId, n: &mut NodeState) -> bool {
        if n.latest.is_none() {
            return false;
        }
        if n.confirmed {
            return self.rotate(now, id, n);
        }
        self.resend(id, n);
        false
    }

    /// Replaces the unconfirmed latest generation, which the node cannot
    /// derive, by a new one of the same number for the node's current
    /// `share`, and sends it under the previous generation (the hello under
    /// it proved the node holds it: I2). The replaced generation was never
    /// sent on by either side; its SAs go after the grace period.
    fn reissue(&mut self, now: Time, id: PeerId, n: &mut NodeState, share: [u8; 32]) {
        let Some(number) = n.latest.as_ref().map(|g| g.number) else {
            return;
        };
        let Some((new, pending)) = self.ratchet_generation(now, id, number, &share) else {
            return;
        };
        if let Some(old) = n.latest.replace(new) {
            self.retire(now, id, old.spi, !old.out_missing);
        }
        n.pending = Some(Box::new(pending));
        self.mark(id, n);
        n.rotations += 1;
        n.key_sent_at = now;
        n.crossing_spared = true;
        let (Some(latest), Some(prev), Some(p)) =
            (n.latest.as_ref(), n.previous.as_mut(), n.pending.as_deref())
        else {
            return;
        };
        let (generation, spi) = (latest.number, latest.spi);
        let (datagram, _) = key_message(latest, prev, p, n.nat);
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions.push_back(Action::Event(Event::Rotated {
            peer: id,
            generation,
            spi,
            tx_spi: n.outbound.unwrap_or(0),
        }));
    }

    /// A message under the previous generation: the node missed the latest
    /// key; send the same key again (I4), protected under the previous one.
    /// Changes no durable state but the `resends` statistic, which is
    /// written lazily (with the next write; a crash may lose a few), and the
    /// send counter (written when it starts a new block).
    pub(super) fn resend(&mut self, id: PeerId, n: &mut NodeState) {
        let (Some(latest), Some(prev), Some(p)) =
            (n.latest.as_ref(), n.previous.as_mut(), n.pending.as_deref())
        else {
            return;
        };
        let (generation, spi) = (latest.number, latest.spi);
        let (datagram, reserve) = key_message(latest, prev, p, n.nat);
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
