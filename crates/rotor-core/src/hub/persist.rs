//! The hub's durable state and kernel repair: which node entries changed,
//! their records, restoring a hub from them, and re-installing what the
//! kernel lost without ever reusing an ESP key for sending (I6).

use super::{Hub, NodeState, Shared};
use crate::action::{Action, Event, Now, PeerId, SaDir, Time};
use crate::config::{ConfigError, HubConfig};
use crate::persist::{self, GenRecord, KernelView, Kind, Record, RecordError, RestoreReport};

/// `at` on the monotonic clock, as Unix milliseconds.
pub(crate) fn mono_to_unix(now: Now, at: Time) -> u64 {
    if at >= now.mono {
        now.unix_ms.saturating_add(at.since(now.mono))
    } else {
        now.unix_ms.saturating_sub(now.mono.since(at))
    }
}

impl Hub {
    /// Appends the ids of the nodes whose record (what [`Self::save_node`]
    /// encodes) must be written since the last call, each once, and clears
    /// the set. The daemon calls it after every burst and stores those
    /// records before executing the burst's actions. Real state changes
    /// mark a node; hellos and acks do not, except once per block of send
    /// counters (see [`crate::persist`]: counters by reservation, replay
    /// windows lazily), so a steady hub writes about one record per node
    /// every `TX_RESERVE` hellos, not one per hello.
    pub fn take_dirty(&mut self, out: &mut Vec<PeerId>) {
        for id in self.shared.dirty.drain(..) {
            if let Some(n) = self.nodes.get_mut(id.0 as usize) {
                n.dirty = false;
                out.push(id);
            }
        }
    }

    /// Encodes node `id`'s record into `out` (cleared first; an unknown id
    /// leaves it empty). The record holds generation secrets: pass a
    /// `Zeroizing<Vec<u8>>`. See [`crate::persist`] for what it holds and
    /// the guarantee on control counters.
    pub fn save_node(&self, id: PeerId, now: Now, out: &mut Vec<u8>) {
        out.clear();
        let Some(n) = self.nodes.get(id.0 as usize) else {
            return;
        };
        let rec = Record {
            latest: n.latest.as_ref().map(GenRecord::of),
            previous: n.previous.as_ref().map(GenRecord::of),
            superseded: n.superseded.clone(),
            last_init_ts: n.last_init_ts,
            rotations: n.rotations,
            inits: n.inits,
            rotate_requested: false,
            confirmed: n.confirmed,
            force_rotate: n.force_rotate,
            outbound: n.outbound,
            rotate_at_unix_ms: mono_to_unix(now, n.rotate_at),
            resends: n.resends,
            node_share: n.node_share,
            pending: n.pending.as_deref().cloned(),
            ratchet_private: None,
        };
        persist::encode(
            Kind::HubEntry,
            self.shared.names.get(id),
            &n.psk_tag,
            self.shared.key_bits,
            &rec,
            out,
        );
    }

    /// A hub built like [`Hub::new`] (and started: [`Hub::start`] is
    /// harmless to call again) whose nodes resume their chains from stored
    /// records: `load(id, name)` returns each configured node's record, if any.
    /// A valid record for that name, PSK and key size restores the node's
    /// generations, counters, init high-water mark, key-SPI table entries and
    /// rotation deadline (clamped into `[now, now + rotate_interval]`);
    /// anything else starts the node at init (refused records are reported
    /// and their nodes marked dirty, so the stale record is overwritten).
    /// Restore emits no actions: the daemon compares [`Self::kernel_view`]
    /// with the kernel and reports what is missing through
    /// [`Self::kernel_lost`].
    ///
    /// Not restored: the init reply cache (a node whose init reply was lost
    /// across the restart has its retransmission refused as a replay and
    /// sends a fresh init after `INIT_REFRESH_MS`), generations awaiting
    /// deletion (their SAs are left to the daemon, see [`KernelView`]), and a
    /// `rotate --all` in progress.
    pub fn restore<'r>(
        cfg: HubConfig,
        now: Now,
        rng_seed: [u8; 32],
        mut load: impl FnMut(PeerId, &str) -> Option<&'r [u8]>,
    ) -> Result<(Hub, RestoreReport), ConfigError> {
        let mut hub = Hub::new(cfg, now, rng_seed)?;
        let mut report = RestoreReport::default();
        let Hub { nodes, shared: sh } = &mut hub;
        for (i, n) in nodes.iter_mut().enumerate() {
            let id = PeerId(i as u32);
            let Some(data) = load(id, sh.names.get(id)) else {
                report.fresh += 1;
                continue;
            };
            match sh.restore_node(now, id, n, data) {
                Ok(()) => report.restored += 1,
                Err(e) => {
                    sh.mark(id, n);
                    report
                        .refused
                        .push((sh.names.get(id).to_string(), e.to_string()));
                }
            }
        }
        hub.start();
        Ok((hub, report))
    }

    /// Every SA (direction, SPI) the hub's state says the kernel holds for
    /// node `id` (latest and previous generations, and replaced chains
    /// awaiting the node's confirmation; an outbound SA known missing is not
    /// listed), and the SPI its outbound policy names (`None`: blocked).
    /// `None` for an unknown id.
    pub fn kernel_view(&self, id: PeerId) -> Option<KernelView> {
        let n = self.nodes.get(id.0 as usize)?;
        let mut sas = Vec::with_capacity(4 + 2 * n.superseded.len());
        for g in [&n.latest, &n.previous].into_iter().flatten() {
            sas.push((SaDir::In, g.spi));
            if !g.out_missing {
                sas.push((SaDir::Out, g.spi));
            }
        }
        for s in &n.superseded {
            sas.push((SaDir::In, *s));
            sas.push((SaDir::Out, *s));
        }
        Some(KernelView {
            sas,
            outbound: n.outbound,
        })
    }

    /// Calls `f(node, spi)` for every replaced generation waiting out its
    /// grace period: its SAs are still wanted in the kernel (reordered
    /// in-flight packets), though no [`crate::KernelView`] lists them.
    pub fn for_each_retiring(&self, mut f: impl FnMut(PeerId, u32)) {
        for &(_, id, spi, _) in &self.shared.retire_queue {
            f(id, spi);
        }
    }

    /// The daemon found these SAs of node `id` missing from the kernel (after
    /// a restart, a reboot or a flush). Repairs what can be repaired without
    /// ever sending twice with one ESP key (I6: a re-added SA restarts its
    /// sequence number, from which AES-GCM builds its IVs):
    /// * inbound SAs of the latest and previous generations are re-installed
    ///   (keys re-derived from the generation secrets);
    /// * the outbound SA of the latest generation, if the hub never sent on
    ///   it (it sends on the previous one), is re-installed;
    /// * an outbound SA the hub may have sent on is not: it is marked
    ///   missing, and if the outbound policy names it, outbound traffic is
    ///   blocked (fail closed) and the node rotated, at once if it is in
    ///   sync (unless repairs are held, [`Self::hold_repairs`]), else at
    ///   its next hello under the latest generation; the
    ///   rotation moves the outbound policy to a generation whose outbound
    ///   SA is unused (the re-installed latest one);
    /// * lost SAs of replaced chains are forgotten (their remaining half is
    ///   a leftover for the daemon, see [`KernelView`]).
    ///
    /// A re-installed inbound SA starts with a fresh kernel replay window: a
    /// captured packet of it could be replayed once. So after any repair the
    /// node is rotated (at its next proof at the latest), and the
    /// re-installed SAs retire through the normal rotations (previous ones
    /// after one rotation plus grace, latest ones after two). Emits
    /// [`Event::KernelRepaired`] and marks the node dirty.
    ///
    /// Relies on the record guarantee of [`crate::persist`]: a record is
    /// stored before the actions of its burst are executed.
    pub fn kernel_lost(&mut self, now: Now, id: PeerId, lost: &[(SaDir, u32)]) {
        let Hub { nodes, shared: sh } = self;
        let Some(n) = nodes.get_mut(id.0 as usize) else {
            return;
        };
        sh.lose(now.mono, id, n, lost, false);
        self.compact_timers();
    }

    /// While `on`, a repair ([`Self::kernel_lost`]) changes the node's
    /// entry (re-installs, blocks, `force_rotate`, marked dirty) but
    /// rotates nobody at once, so its actions are the re-installs and
    /// blocking alone: none of them needs the node's record written first
    /// (a restart that finds the old record sees the same SAs missing and
    /// repairs the same way; the outbound SA re-installed was never sent
    /// on, and the record still says so).
    ///
    /// A held repair reports no [`Event::KernelRepaired`]: a takeover
    /// repairs every node, and its caller reports how many at once.
    ///
    /// A hub taking over a kernel that lacks its SAs holds the repairs of
    /// its first pass so that the re-installs go in, and node traffic
    /// flows, before tens of thousands of records are written. Its caller
    /// then owes every repaired node a [`Self::settle_repair`], and must
    /// make the repairs' `force_rotate` survive a restart of the same
    /// kernel by its own means until they are settled: a restart that
    /// adopts the re-installed SAs sees nothing missing, so only that
    /// keeps their fresh replay windows from outliving the repair.
    pub fn hold_repairs(&mut self, on: bool) {
        self.shared.hold_repairs = on;
    }

    /// Makes node `id`'s repair durable: a node still owed its rotation
    /// (`force_rotate`) is rotated now if it is in sync, else marked dirty
    /// so that its record, `force_rotate` set, is written with this step,
    /// and sent its latest key again to ask for the proof that rotates it
    /// (see `rotate_or_ask`).
    /// With `force`, `force_rotate` is set first on a node with a chain
    /// (the caller cannot tell which nodes an earlier run repaired; a node
    /// without one has no SA to replace). A node rotated since its repair
    /// needs nothing: that rotation wrote its record.
    pub fn settle_repair(&mut self, now: Now, id: PeerId, force: bool) {
        let Hub { nodes, shared: sh } = self;
        let Some(n) = nodes.get_mut(id.0 as usize) else {
            return;
        };
        n.force_rotate |= force && n.latest.is_some();
        if !n.force_rotate {
            return;
        }
        if !sh.rotate_or_ask(now.mono, id, n) {
            sh.mark(id, n);
        }
        self.compact_timers();
    }
}

impl Shared {
    /// [`Hub::kernel_lost`] for an entry already in hand (also the second
    /// half of a path change: the SAs on the old path are gone). For a
    /// path change (`moved`), a blocked node is rotated by the message being
    /// handled (a path changes only on one), not from inside its handling,
    /// and no [`Event::KernelRepaired`] is reported (the move is).
    pub(super) fn lose(
        &mut self,
        now: Time,
        id: PeerId,
        n: &mut NodeState,
        lost: &[(SaDir, u32)],
        moved: bool,
    ) {
        let sh = self;
        let mut reinstalled = 0u32;
        let mut blocked = false;
        let mut any = false;
        for &(dir, spi) in lost {
            let is_latest = n.latest.as_ref().is_some_and(|g| g.spi == spi);
            let g = if is_latest {
                n.latest.as_mut()
            } else {
                n.previous.as_mut().filter(|g| g.spi == spi)
            };
            if let Some(g) = g {
                match dir {
                    SaDir::In => {
                        let esp = g.esp_keys(sh.names.get(id), sh.key_bits);
                        sh.actions.push_back(Action::InstallSa {
                            peer: id,
                            dir,
                            spi,
                            key: esp.n2h,
                        });
                        reinstalled += 1;
                    }
                    SaDir::Out if g.out_missing => continue,
                    SaDir::Out if is_latest && n.outbound != Some(spi) => {
                        // Never sent on: the hub sends on the previous
                        // generation, on the latest only once it is the
                        // outbound (the init exception).
                        let esp = g.esp_keys(sh.names.get(id), sh.key_bits);
                        sh.actions.push_back(Action::InstallSa {
                            peer: id,
                            dir,
                            spi,
                            key: esp.h2n,
                        });
                        reinstalled += 1;
                    }
                    SaDir::Out => {
                        g.out_missing = true;
                        if n.outbound == Some(spi) {
                            sh.set_outbound(id, n, None);
                            blocked = true;
                        }
                    }
                }
                any = true;
            } else if let Some(pos) = n.superseded.iter().position(|s| *s == spi) {
                n.superseded.remove(pos);
                sh.table.release(spi);
                if n.outbound == Some(spi) {
                    sh.set_outbound(id, n, None);
                    blocked = true;
                }
                any = true;
            }
        }
        if !any {
            return;
        }
        n.force_rotate = true;
        sh.mark(id, n);
        // A move reports itself and rotates from the message that moved
        // the node; a held repair is counted and settled by the caller.
        let by_caller = moved || sh.hold_repairs;
        if !by_caller {
            sh.actions.push_back(Action::Event(Event::KernelRepaired {
                peer: id,
                reinstalled,
                blocked,
            }));
        }
        if !by_caller && blocked {
            sh.rotate_or_ask(now, id, n);
        }
    }
}

impl Shared {
    /// Loads one node's record into its (fresh) entry. On error the entry
    /// and the key-SPI table are left as they were.
    fn restore_node(
        &mut self,
        now: Now,
        id: PeerId,
        n: &mut NodeState,
        data: &[u8],
    ) -> Result<(), RecordError> {
        let name = self.names.get(id);
        let rec = persist::decode(Kind::HubEntry, name, &n.psk_tag, self.key_bits, data)?;
        let spis: Vec<u32> = [&rec.latest, &rec.previous]
            .into_iter()
            .flatten()
            .map(|g| g.spi)
            .chain(rec.superseded.iter().copied())
            .collect();
        for (k, spi) in spis.iter().enumerate() {
            if !self.table.claim(*spi, id) {
                for s in &spis[..k] {
                    self.table.release(*s);
                }
                return Err(RecordError::Invalid("SPI already in use"));
            }
        }
        let name = self.names.get(id);
        n.latest = rec.latest.map(|g| g.into_generation(name));
        n.previous = rec.previous.map(|g| g.into_generation(name));
        n.superseded = rec.superseded;
        n.confirmed = rec.confirmed;
        n.outbound = rec.outbound;
        n.force_rotate = rec.force_rotate;
        n.last_init_ts = rec.last_init_ts;
        n.rotations = rec.rotations;
        n.resends = rec.resends;
        n.inits = rec.inits;
        n.node_share = rec.node_share;
        n.pending = rec.pending.map(Box::new);
        let ahead = rec
            .rotate_at_unix_ms
            .saturating_sub(now.unix_ms)
            .min(n.rotate_interval_ms);
        n.rotate_at = now.mono.plus_ms(ahead);
        n.key_sent_at = now.mono;
        n.crossing_spared = true;
        Ok(())
    }
}
