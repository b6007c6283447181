//! Partitions, settling, snapshots and the convergence checks.

use super::*;

impl Sim {
    /// Cuts the link between `a` and `b` (it must exist).
    pub fn cut(&mut self, a: usize, b: usize) {
        let l = self.link_between(a, b);
        self.act(Action::Cut(vec![l]));
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        let l = self.link_between(a, b);
        self.act(Action::Heal(vec![l]));
    }

    pub(super) fn link_between(&self, a: usize, b: usize) -> usize {
        self.links
            .iter()
            .position(|l| (l.a, l.b) == (a.min(b), a.max(b)))
            .expect("link exists")
    }

    // ---------------------------------------------------------------- the end

    /// Every node up, every link established and idle, every replica at the same
    /// version vector with nothing buffered, nothing but keepalives on the wire.
    pub fn quiet(&self) -> bool {
        if self.nodes.iter().any(|n| n.node.is_none()) {
            return false;
        }
        let vv = self.node(0).version_vector();
        if self
            .members()
            .any(|i| self.node(i).version_vector() != vv || self.node(i).buffered_ops() > 0)
        {
            return false;
        }
        let idle = self.member_links().all(|l| {
            l.conn
                .as_ref()
                .is_some_and(|c| c.s.iter().all(|s| s.is_established() && s.unacked_bytes() == 0))
        });
        idle && self
            .wire
            .values()
            .all(|f| !matches!(Message::decode(&f.bytes), Ok(Message::Ops { .. })))
    }

    /// The nodes that were not removed.
    pub(super) fn members(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| !self.nodes[i].removed)
    }

    /// Links between nodes that were not removed.
    pub(super) fn member_links(&self) -> impl Iterator<Item = &Link> + '_ {
        self.links
            .iter()
            .filter(|l| !self.nodes[l.a].removed && !self.nodes[l.b].removed)
    }

    /// Stops the workload, heals every partition, restarts every stopped node, cleans
    /// the wire, and runs until the cluster is quiet (panics if it never gets there).
    pub fn settle(&mut self) {
        self.actions.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].downs > 0 {
                self.nodes[i].downs = 0;
                self.reopen(i);
            }
        }
        for j in 0..self.nodes.len() {
            self.nodes[j].frozen_until = 0;
            self.mark_node_dirty(j);
            if !self.nodes[j].admitted {
                self.admit(j);
            }
        }
        for l in 0..self.links.len() {
            self.links[l].cuts = 0;
            self.links[l].failures = 0;
            if self.links[l].conn.is_none() {
                self.links[l].next_attempt = self.t;
            }
        }
        self.faults = Faults {
            min_delay_ms: self.faults.min_delay_ms,
            max_delay_ms: self.faults.max_delay_ms,
            ..Faults::clean()
        };
        let deadline = self.t + 20 * 60_000;
        while !self.quiet() {
            assert!(
                self.t < deadline,
                "{}: the cluster did not converge within 20 simulated minutes of healing:\n{}",
                self.ctx(),
                self.describe()
            );
            self.run_for(500);
        }
    }

    /// Links and version vectors, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.node {
                Some(node) => {
                    s += &format!(
                        "node {i} {}: vv {:?} buffered {}\n",
                        n.id.short(),
                        node.version_vector(),
                        node.buffered_ops()
                    )
                }
                None => s += &format!("node {i}: down\n"),
            }
        }
        for l in &self.links {
            let state = match &l.conn {
                None => "no connection".to_string(),
                Some(c) => format!(
                    "conn {}: established {}/{}, unacked {}/{}",
                    c.id,
                    c.s[0].is_established(),
                    c.s[1].is_established(),
                    c.s[0].unacked_bytes(),
                    c.s[1].unacked_bytes()
                ),
            };
            s += &format!("link {}-{} (cuts {}): {state}\n", l.a, l.b, l.cuts);
        }
        s
    }

    /// The projection of node `i` at `now`.
    pub fn snapshot(&self, i: usize, now: Timestamp) -> Snapshot {
        let node = self.node(i);
        Snapshot {
            vv: node.version_vector(),
            // Whether a claim is confirmed is each node's own knowledge (who it waits for),
            // not a replicated fact: left out of the comparison.
            stories: node
                .stories(None, now)
                .expect("stories")
                .into_iter()
                .map(|mut s| {
                    s.claim_confirmed = false;
                    s
                })
                .collect(),
            all: self
                .pool
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        node.story(id, now)
                            .map(|mut s| {
                                s.claim_confirmed = false;
                                s
                            })
                            .map_err(|e| e.to_string()),
                        node.history(id).map_err(|e| e.to_string()),
                    )
                })
                .collect(),
            members: node.members(),
            nodes: node.nodes(now).expect("nodes"),
            merge_lock: node.merge_lock(now).expect("merge lock"),
            forks: node.forks().expect("forks"),
        }
    }

    /// After [`Sim::settle`]: a minute more changes nothing, and every replica holds the
    /// same ops, every committed op, the same projection, and a store that verifies.
    pub fn assert_converged(&mut self) {
        let vv = self.node(0).version_vector();
        let ops_frames = self.stats.ops_frames;
        self.run_for(60_000);
        assert_eq!(
            self.stats.ops_frames,
            ops_frames,
            "{}: ops were sent again after every replica held them",
            self.ctx()
        );
        assert!(
            self.quiet(),
            "{}: not quiet a minute later:\n{}",
            self.ctx(),
            self.describe()
        );
        assert_eq!(
            self.node(0).version_vector(),
            vv,
            "{}: ops appeared after quiet",
            self.ctx()
        );
        for l in self.member_links() {
            let c = l.conn.as_ref().expect("connected");
            for (side, s) in c.s.iter().enumerate() {
                assert_eq!(
                    s.peer_version(),
                    &vv,
                    "{}: the session of node {} believes its peer holds something else",
                    self.ctx(),
                    l.node(side)
                );
            }
        }
        let now = self.global_now();
        let reference = self.snapshot(0, now);
        assert!(
            reference.forks.is_empty(),
            "{}: forks: {:?}",
            self.ctx(),
            reference.forks
        );
        let log: BTreeSet<OpId> = self
            .node(0)
            .log(None)
            .expect("log")
            .into_iter()
            .map(|o| o.op_id)
            .collect();
        for &(i, seq, id) in &self.receipts {
            // A removed node's ops past its cutoff are void everywhere.
            if seq <= vv.get(&self.nodes[i].id) {
                assert!(log.contains(&id), "{}: committed op {id} is missing", self.ctx());
            } else {
                assert!(
                    self.nodes[i].removed,
                    "{}: node {i}'s op {seq} is missing",
                    self.ctx()
                );
            }
        }
        for i in self.members() {
            let n = &self.nodes[i];
            assert_eq!(vv.get(&n.id), n.last_seq, "{}: node {i}'s own ops", self.ctx());
        }
        for i in self.members().collect::<Vec<_>>() {
            let snap = self.snapshot(i, now);
            if snap != reference {
                panic!(
                    "{}: node {i} diverges from node 0:\n{}",
                    self.ctx(),
                    first_difference(&reference, &snap)
                );
            }
            let report = self.node(i).verify(|_| {}).expect("verify");
            assert!(
                report.ok,
                "{}: node {i} verify: {:?}",
                self.ctx(),
                report.problems
            );
        }
    }

    /// Live stories per stage on node 0, for the run summary.
    pub fn stage_summary(&self) -> String {
        let counts = self.node(0).stage_counts().expect("counts");
        StageKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.as_str(), counts.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn first_difference(a: &Snapshot, b: &Snapshot) -> String {
    macro_rules! cmp {
        ($f:ident) => {
            if a.$f != b.$f {
                return format!(
                    "{}:\n  node 0: {:?}\n  other:  {:?}",
                    stringify!($f),
                    a.$f,
                    b.$f
                );
            }
        };
    }
    cmp!(vv);
    for (x, y) in a.all.iter().zip(&b.all) {
        if x != y {
            return format!("story {}:\n  node 0: {x:?}\n  other:  {y:?}", x.0);
        }
    }
    cmp!(stories);
    cmp!(members);
    cmp!(nodes);
    cmp!(merge_lock);
    cmp!(forks);
    "no difference found".into()
}

/// Runs one scenario with one seed to convergence and checks it; returns the stats.
pub fn run_scenario(seed: u64, sc: &Scenario) -> Stats {
    eprintln!("sim seed = {seed}");
    let started = std::time::Instant::now();
    let mut sim = Sim::new(seed, sc);
    sim.run_until(sc.workload_ms);
    let workload_end = sim.t;
    sim.settle();
    let settled = sim.t - workload_end;
    sim.assert_converged();
    eprintln!(
        "sim seed {seed}: {} nodes, {} links, settled {settled} ms after the workload; {:.1}s real\n  {:?}\n  stages: {}",
        sim.nodes.len(),
        sim.links.len(),
        started.elapsed().as_secs_f64(),
        sim.stats,
        sim.stage_summary()
    );
    sim.stats.clone()
}
