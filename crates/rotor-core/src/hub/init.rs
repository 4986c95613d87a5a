//! Answering init requests: a node without keys, or giving up on the hub,
//! gets a fresh chain starting at generation 1.

use rand::RngCore;

use super::admit::{INITS, RESENDS};
use super::{MAX_SUPERSEDED, NodeState, Shared};
use crate::action::{Action, DropReason, Event, Now, PeerId};
use crate::key_schedule::{init_reply_mac_key, init_request_key, init_session_key};
use crate::wire::{Datagram, InitReply, Message};
use crate::x25519::Ephemeral;

impl Shared {
    /// An init request under node `id`'s init SPI. Accepted only if it
    /// authenticates, its timestamp is newer than the last accepted one and
    /// within the skew of `now.unix_ms`, and the X25519 exchange contributes;
    /// then generation 1 is created and sent. An exact retransmission of the
    /// last accepted init gets the same reply again and changes nothing else.
    pub(super) fn init(
        &mut self,
        now: Now,
        id: PeerId,
        n: &mut NodeState,
        dg: &Datagram<'_>,
    ) -> Result<(), DropReason> {
        let node_nonce = dg.init_nonce().ok_or(DropReason::UnexpectedType)?;
        let key = init_request_key(&n.psk, self.names.get(id), &node_nonce);
        let Message::Init {
            timestamp_ms,
            eph_pub,
            ..
        } = dg.open(&key).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if timestamp_ms == n.last_init_ts
            && let Some(last) = &n.last_init
            && last.0 == node_nonce
        {
            // The node did not get our reply: send the same one again. Only
            // the `resends` statistic changes: written lazily.
            if !n.resend_bucket.take(now.mono, RESENDS) {
                return Err(DropReason::RateLimited);
            }
            let datagram = last.1.clone();
            n.resends += 1;
            self.actions.push_back(Action::Send { peer: id, datagram });
            return Ok(());
        }
        if timestamp_ms <= n.last_init_ts {
            return Err(DropReason::InitReplay);
        }
        if timestamp_ms.abs_diff(now.unix_ms) > self.init_skew_ms {
            return Err(DropReason::InitClockSkew);
        }
        // Authenticated and fresh: only now may it spend the node's budget
        // (a forgery must not), and only within it the X25519 and two SAs.
        if !n.init_bucket.take(now.mono, INITS) {
            return Err(DropReason::RateLimited);
        }
        let eph = Ephemeral::generate(&mut self.rng).ok_or(DropReason::BadEphemeral)?;
        let hub_pub = *eph.public();
        let dh = eph.agree(&eph_pub).ok_or(DropReason::BadEphemeral)?;
        drop(eph);
        // Accepted: from here on, state changes.
        let mut hub_nonce = [0u8; 32];
        self.rng.fill_bytes(&mut hub_nonce);
        let session = init_session_key(&n.psk, &dh, &node_nonce, &hub_nonce, self.names.get(id));
        // Make before break across re-init: every replaced chain stays installed
        // (and the hub keeps sending on the one it sends on) until the node
        // confirms the new generation 1; the node may be using any of them.
        // A generation whose outbound SA is known missing cannot be kept as
        // a plain superseded SPI (whose retirement deletes both SAs): it is
        // retired at once, after the grace period, inbound SA only.
        for g in [n.previous.take(), n.latest.take()].into_iter().flatten() {
            if g.out_missing {
                self.retire(now.mono, id, g.spi, false);
            } else {
                n.superseded.push(g.spi);
            }
        }
        let excess = n.superseded.len().saturating_sub(MAX_SUPERSEDED);
        for spi in n.superseded.drain(..excess) {
            self.retire(now.mono, id, spi, true);
        }
        // Generation 1's secret is random: it travels under the init
        // session key, which the init's own X25519 exchange protects.
        let secret = self.random32();
        let spi = self.table.allocate(&mut self.rng, id);
        let gen1 = self.new_generation(id, 1, spi, secret);
        n.node_share = [0; 32];
        n.pending = None;
        // An accepted init is written at once: its high-water mark
        // `last_init_ts` must be durable before the reply leaves, or a
        // replay of this init after a restart would be accepted again and
        // replace the chain.
        self.mark(id, n);
        n.last_init_ts = timestamp_ms;
        n.confirmed = false;
        n.force_rotate = false;
        n.inits += 1;
        n.key_sent_at = now.mono;
        n.last_seen = Some(now.mono);
        n.rotate_at = now.mono.plus_ms(n.rotate_interval_ms);
        self.push_rotation(n.rotate_at, id);
        let spi = gen1.spi;
        let datagram = Message::Key {
            spi: n.init_spi,
            counter: 0,
            init_reply: Some(InitReply { hub_nonce, hub_pub }),
            generation: 1,
            gen_spi: spi,
            secret: gen1.secret.clone(),
            hub_share: [0; 32],
            nat: n.nat,
        }
        .seal_init_reply(
            &session,
            &init_reply_mac_key(&n.psk, self.names.get(id), &node_nonce),
        );
        n.latest = Some(gen1);
        n.last_init = Some(Box::new((node_nonce, datagram.clone())));
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions
            .push_back(Action::Event(Event::Initialised { peer: id, spi }));
        Ok(())
    }
}
