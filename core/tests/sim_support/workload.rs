//! Scheduled actions, restarts, admissions and the random command workload.

use super::*;

impl Sim {
    pub(super) fn act(&mut self, action: Action) {
        match action {
            Action::Command(i) => {
                // A node writes once it knows it is a member.
                if self.knows(i, i) && !self.frozen(i) {
                    self.workload_step(i);
                }
            }
            Action::Cut(links) => {
                self.stats.partitions += 1;
                for l in links {
                    self.links[l].cuts += 1;
                    if let Some(conn) = self.links[l].conn.take() {
                        self.close_conn(l, conn, None, false);
                    }
                }
            }
            Action::Heal(links) => {
                for l in links {
                    self.links[l].cuts -= 1;
                    if self.links[l].cuts == 0 {
                        let jitter = self.rng.gen_range(0..500);
                        self.links[l].next_attempt = self.t + jitter;
                        self.links[l].failures = 0;
                    }
                }
            }
            Action::Crash { node, graceful } => self.crash(node, graceful),
            Action::Start(i) => self.start(i),
            Action::Freeze { node, ms } => {
                if self.up(node) {
                    self.stats.freezes += 1;
                    let until = self.nodes[node].frozen_until.max(self.t + ms);
                    self.nodes[node].frozen_until = until;
                    self.schedule(until, Action::Thaw(node));
                }
            }
            Action::Thaw(i) => {
                if !self.frozen(i) {
                    self.mark_node_dirty(i);
                }
            }
            Action::Remove => {
                if !self.up(0) {
                    self.schedule(self.t + 1_000, Action::Remove);
                } else if let Some(k) = self.victim {
                    let node = self.nodes[k].id;
                    self.stats.removals += 1;
                    self.execute(0, Command::RemoveMember { node });
                    self.nodes[k].removed = true;
                }
            }
            Action::Admit(j) => {
                if self.up(0) {
                    self.admit(j);
                } else {
                    self.schedule(self.t + 1_000, Action::Admit(j));
                }
            }
        }
    }

    /// Stops node `i`: closes its connections (politely, or as a crash would) and drops
    /// the `Node`, releasing its home.
    pub fn crash(&mut self, i: usize, graceful: bool) {
        self.nodes[i].downs += 1;
        if !self.up(i) {
            return;
        }
        self.stats.restarts += 1;
        for l in self.links_of(i) {
            let Some(mut conn) = self.links[l].conn.take() else {
                continue;
            };
            let side = if self.links[l].a == i { 0 } else { 1 };
            if graceful {
                conn.s[side].close(RefuseCode::Shutdown, "shutting down");
                self.close_conn(l, conn, Some(side), false);
            } else {
                self.close_conn(l, conn, None, false);
            }
        }
        let node = self.nodes[i].node.take().expect("up");
        self.nodes[i].frozen_until = 0;
        self.nodes[i].last_lamport = node.lamport();
        assert!(
            self.nodes[i].removed || node.version_vector().get(&self.nodes[i].id) == self.nodes[i].last_seq,
            "{}: node {i} holds a different own head than it wrote",
            self.ctx()
        );
        drop(node);
    }

    /// Undoes one [`Sim::crash`] of node `i`: once none is pending, reopens it.
    pub fn start(&mut self, i: usize) {
        self.nodes[i].downs -= 1;
        if self.nodes[i].downs == 0 {
            self.reopen(i);
        }
    }

    /// Reopens node `i` from its home and checks it remembers its own head and clock.
    pub(super) fn reopen(&mut self, i: usize) {
        let node = Node::open(&self.nodes[i].home, node_config())
            .unwrap_or_else(|e| panic!("{}: reopening node {i}: {e}", self.ctx()));
        assert_eq!(node.node_id(), self.nodes[i].id);
        assert!(
            self.nodes[i].removed || node.version_vector().get(&self.nodes[i].id) == self.nodes[i].last_seq,
            "{}: node {i} lost or invented own ops across a restart",
            self.ctx()
        );
        assert!(
            node.lamport() >= self.nodes[i].last_lamport,
            "{}: node {i}'s Lamport clock went back across a restart: {} < {}",
            self.ctx(),
            node.lamport(),
            self.nodes[i].last_lamport
        );
        self.nodes[i].node = Some(node);
        for l in self.links_of(i) {
            if self.links[l].conn.is_none() {
                self.links[l].next_attempt = self.links[l].next_attempt.max(self.t);
            }
        }
    }

    pub(super) fn admit(&mut self, j: usize) {
        let role = if self.rng.gen_bool(0.5) {
            Role::Admin
        } else {
            Role::Member
        };
        let node = self.nodes[j].id;
        self.execute(0, Command::AddMember { node, role });
        self.nodes[j].admitted = true;
    }

    // ---------------------------------------------------------------- workload

    pub(super) fn fresh_story(&mut self) -> StoryId {
        self.next_story += 1;
        let id = StoryId::new(format!("{}_story", self.next_story)).expect("valid id");
        self.pool.push(id.clone());
        id
    }

    pub(super) fn any_story(&mut self, visible: &[Story]) -> Option<StoryId> {
        if !visible.is_empty() && self.rng.gen_bool(0.85) {
            return visible.choose(&mut self.rng).map(|s| s.id.clone());
        }
        self.pool.choose(&mut self.rng).cloned()
    }

    pub(super) fn text(&mut self, what: &str) -> String {
        format!("{what} {}", self.rng.gen_range(0..10_000))
    }

    pub(super) fn events_for(&mut self, stage: &Stage) -> Vec<PipelineEvent> {
        let commits = nz(self.rng.gen_range(1..20));
        let branch = format!("feature/{}", self.rng.gen_range(0..100));
        let forward = match stage {
            Stage::Backlog => vec![PipelineEvent::DepsMet],
            Stage::Coding => vec![
                PipelineEvent::GatesStarted,
                PipelineEvent::GatesStarted,
                PipelineEvent::QaSkipped { branch, commits },
            ],
            Stage::Qa => vec![
                PipelineEvent::GatesPassed { branch, commits },
                PipelineEvent::GatesFailed {
                    reason: self.text("flaky"),
                },
            ],
            Stage::Merge { .. } => vec![
                PipelineEvent::MergeSucceeded {
                    commit: format!("{:040x}", self.rng.gen::<u128>()),
                },
                PipelineEvent::MergeConflict {
                    kind: "conflict".into(),
                    reason: self.text("conflict in"),
                },
            ],
            Stage::MergeFailure { .. } => vec![
                PipelineEvent::GatesPassed { branch, commits },
                PipelineEvent::MergeFailedFinal {
                    reason: self.text("gave up"),
                },
            ],
            Stage::Done { .. } => vec![PipelineEvent::Accepted],
            Stage::Archived {
                reason: huskies_core::ArchiveReason::Blocked { .. },
                ..
            } => vec![PipelineEvent::Unblock],
            Stage::Archived { .. } => vec![],
        };
        if !forward.is_empty() && self.rng.gen_bool(0.85) {
            return forward;
        }
        let by = self.pool.choose(&mut self.rng).cloned();
        let mut side = vec![
            PipelineEvent::Block {
                reason: self.text("blocked on"),
            },
            PipelineEvent::ReviewHold {
                reason: self.text("review"),
            },
            PipelineEvent::Abandon,
            PipelineEvent::Unblock,
        ];
        if let Some(by) = by {
            side.push(PipelineEvent::Supersede { by });
        }
        side
    }

    pub(super) fn random_command(&mut self, i: usize, now: Timestamp) -> Command {
        if self.story_lists.len() <= i {
            self.story_lists.resize_with(i + 1, || None);
        }
        let list = match self.story_lists[i].take() {
            Some((n, list)) if n < self.story_list_every => (n + 1, list),
            _ => (1, self.node(i).stories(None, now).expect("stories")),
        };
        let cmd = self.random_command_from(i, now, &list.1);
        self.story_lists[i] = Some(list);
        cmd
    }

    fn random_command_from(&mut self, i: usize, now: Timestamp, visible: &[Story]) -> Command {
        let me = self.nodes[i].id;
        let roll = self.rng.gen_range(0..100);
        let story = self.any_story(visible);
        let Some(id) = story.filter(|_| roll >= 15) else {
            // AddStory: mostly fresh ids, sometimes one another node may be creating.
            let id = if self.pool.is_empty() || self.rng.gen_bool(0.9) {
                self.fresh_story()
            } else {
                self.pool.choose(&mut self.rng).cloned().expect("pool")
            };
            let deps = (0..self.rng.gen_range(0..3))
                .filter_map(|_| self.pool.choose(&mut self.rng).cloned())
                .filter(|d| *d != id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            return Command::AddStory {
                name: self.text("story"),
                body: self.rng.gen_bool(0.5).then(|| self.text("body")),
                id,
                depends_on: deps,
            };
        };
        let current = visible.iter().find(|s| s.id == id);
        match roll {
            15..=49 => {
                let stage = current.map_or(Stage::Backlog, |s| s.stage.clone());
                let events = self.events_for(&stage);
                let event = events
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or(PipelineEvent::DepsMet);
                Command::Event { id, event }
            }
            50..=59 => Command::Claim {
                id,
                ttl_secs: self.rng.gen_range(5..600),
            },
            60..=64 => {
                let mine = visible
                    .iter()
                    .filter(|s| s.claim.as_ref().is_some_and(|c| c.node == me))
                    .map(|s| s.id.clone())
                    .collect::<Vec<_>>();
                let id = mine.choose(&mut self.rng).cloned().unwrap_or(id);
                Command::Release { id }
            }
            65..=72 => Command::Heartbeat {
                label: format!("node-{i}"),
                address: self.rng.gen_bool(0.5).then(|| format!("10.0.0.{i}:7000")),
            },
            73..=82 => {
                let field = match self.rng.gen_range(0..3) {
                    0 => StoryField::Name(self.text("renamed")),
                    1 => StoryField::Body(self.rng.gen_bool(0.7).then(|| self.text("new body"))),
                    _ => StoryField::DependsOn(
                        self.pool
                            .choose_multiple(&mut self.rng, 2)
                            .filter(|d| **d != id)
                            .cloned()
                            .collect(),
                    ),
                };
                Command::UpdateStory { id, field }
            }
            83..=85 => Command::DeleteStory { id },
            86..=89 => Command::AcquireMergeLock {
                ttl_secs: self.rng.gen_range(5..300),
            },
            90..=92 => Command::ReleaseMergeLock,
            93 => Command::ClearStaleMergeLock,
            _ => {
                let event = match self.rng.gen_range(0..7) {
                    0 => ExecutionEvent::SpawnRequested {
                        agent: format!("agent-{i}"),
                    },
                    1 => ExecutionEvent::SpawnedSuccessfully,
                    2 => ExecutionEvent::Heartbeat,
                    3 => ExecutionEvent::HitRateLimit {
                        resume_at: now.add_secs(60),
                    },
                    4 => ExecutionEvent::Exited {
                        exit_code: self.rng.gen_range(0..3),
                    },
                    5 => ExecutionEvent::Stopped,
                    _ => ExecutionEvent::Reset,
                };
                Command::Execution { id, event }
            }
        }
    }

    pub(super) fn workload_step(&mut self, i: usize) {
        let now = self.now(i);
        let count = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(2..4)
        } else {
            1
        };
        let cmds: Vec<Command> = (0..count).map(|_| self.random_command(i, now)).collect();
        let node = self.nodes[i].node.as_mut().expect("up");
        let results = if count == 1 {
            vec![node.execute(now, cmds[0].clone())]
        } else {
            node.execute_group(now, cmds.clone())
                .unwrap_or_else(|e| panic!("sim seed {}: group commit failed: {e}", self.seed))
        };
        let mut wrote = false;
        for (cmd, r) in cmds.iter().zip(results) {
            match r {
                Ok(receipt) => {
                    let n = &mut self.nodes[i];
                    assert_eq!(
                        receipt.seq,
                        n.last_seq + 1,
                        "sim seed {}: node {i} reused or skipped a seq",
                        self.seed
                    );
                    assert!(
                        receipt.lamport > n.last_lamport,
                        "sim seed {}: node {i} did not advance its Lamport clock",
                        self.seed
                    );
                    n.last_seq = receipt.seq;
                    n.last_lamport = receipt.lamport;
                    self.receipts.push((i, receipt.seq, receipt.op_id));
                    self.stats.commands_ok += 1;
                    wrote = true;
                }
                Err(e) => {
                    let expected = match e.kind() {
                        ErrorKind::NotFound | ErrorKind::InvalidTransition | ErrorKind::ClaimConflict => true,
                        ErrorKind::AlreadyExists => matches!(cmd, Command::AddStory { .. }),
                        // A local supersede names another story (the pool may draw itself).
                        ErrorKind::InvalidArgument => matches!(
                            cmd,
                            Command::Event { id, event: PipelineEvent::Supersede { by } } if by == id
                        ),
                        _ => false,
                    };
                    assert!(
                        expected,
                        "sim seed {} at t={}: node {i}: {cmd:?} failed unexpectedly: {e} ({:?})",
                        self.seed,
                        self.t,
                        e.kind()
                    );
                    *self.stats.commands_refused.entry(e.kind().as_str()).or_default() += 1;
                }
            }
        }
        if wrote {
            self.mark_node_dirty(i);
        }
        // Keep track of the clock even when everything was refused (ingests move it too).
        let lamport = self.node(i).lamport();
        self.nodes[i].last_lamport = self.nodes[i].last_lamport.max(lamport);
    }

    /// Executes `cmd` on node `i` now (it must succeed).
    pub fn execute(&mut self, i: usize, cmd: Command) {
        let now = self.now(i);
        let node = self.nodes[i].node.as_mut().expect("up");
        let receipt = node
            .execute(now, cmd)
            .unwrap_or_else(|e| panic!("sim seed {}: {e}", self.seed));
        self.nodes[i].last_seq = receipt.seq;
        self.nodes[i].last_lamport = receipt.lamport;
        self.receipts.push((i, receipt.seq, receipt.op_id));
        self.mark_node_dirty(i);
    }

    /// A fresh story id, remembered for the final comparison.
    pub fn new_story_id(&mut self) -> StoryId {
        self.fresh_story()
    }
}
