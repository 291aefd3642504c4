//! Stage 7: from the differentiated graph to an execution plan.
//!
//! Every node runs in one of four programs: `Prepare` (once per sequence, before the
//! time loop: the hoisted input projections), `StepForward` and `StepBackward` (once per
//! step), and `Finish` (once, after the backward loop: the hoisted values' backward and
//! every weight gradient, each one GEMM over all steps). A program is a list of stages:
//! GEMMs on stacked weights, copies, and fused kernels in which every elementwise node of
//! one size and one level is a local of a single loop. Values cross a kernel boundary
//! through tape buffers; only those that another stage, program or the backward pass
//! reads are stored ("keep only what backward reads"). A sum of a loop's value and a
//! product runs as the product added onto that value (`FusedSum`), with no loop of its
//! own; a hoisted product's block plus biases, as the product started from the biases
//! (`BiasFold`).

use crate::compile::Compiled;
use crate::ir::{Block, NodeId, Op};
use crate::optimize::dynamic_nodes;
use crate::parse::BinOp;
use crate::plan::*;
use crate::size::Size;

/// A value that a program must deliver somewhere other than its own buffer.
#[derive(Clone, Debug)]
enum Target {
    Loc(Loc),
    /// Wherever that node is placed (a bridge, placed after roots are collected).
    LocOf(NodeId),
    Grad(usize),
}

/// A sum `term + S·v` run as its product added onto `term`: the loop that computes
/// `term` stores it where the sum goes, and the GEMM adds to it there, so no loop runs
/// for the sum itself. Where that sum is all a loop would do (the MGU's and the GRU's
/// gradient of the previous state: a loop's term plus the recurrent weight's
/// transpose times dz), a fused loop per step less.
#[derive(Clone, Copy, Debug)]
struct FusedSum {
    sum: NodeId,
    term: NodeId,
    product: NodeId,
}

/// A hoisted sum `W·x + b + b'` (rows of a stacked product plus vector parameters)
/// run as the product added onto its biases: the GEMM's accumulators start from the
/// biases' sum (`Stage::Gemm::biases`), and the sum is then a view of the product's
/// rows. The LSTM's gates each had a loop over every column to add their two biases,
/// reading the projection and writing a buffer of its own: 2.9% of the tiny LSTM's
/// time.
#[derive(Clone, Debug)]
struct BiasFold {
    gemm: NodeId,
    /// The product's rows that the biases go to: a block's, or all of them.
    start: Size,
    params: Vec<usize>,
    /// The sum, read from the product's rows.
    top: NodeId,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Parameters, literals, zeros: read where used, no program computes them.
    Free,
    /// Inputs, previous states, arriving gradients, bridges: already in a buffer.
    Leaf,
    /// Elementwise: a local of a fused loop.
    Kernel,
    /// GEMMs and concatenations: run between loops, into their own buffer.
    Between,
    /// A view of rows of another node's buffer.
    View,
}

pub fn schedule(compiled: &Compiled) -> Plan {
    Scheduler::new(compiled).run()
}

struct Scheduler<'a> {
    c: &'a Compiled,
    role: Vec<Role>,
    program: Vec<Option<Program>>,
    level: Vec<usize>,
    users: Vec<Vec<NodeId>>,
    roots: Vec<(Program, NodeId, Target)>,
    post_loop: Vec<bool>,
    loc: Vec<Option<Loc>>,
    buffers: Vec<Buffer>,
    stacks: Vec<Stack>,
    roles: Roles,
    fused: Vec<FusedSum>,
    folds: Vec<BiasFold>,
}

impl<'a> Scheduler<'a> {
    fn new(c: &'a Compiled) -> Self {
        let graph = &c.ir.graph;
        let dynamic = dynamic_nodes(graph);
        let role: Vec<Role> = graph
            .nodes
            .iter()
            .map(|node| match node.op {
                Op::Param(_) | Op::Lit(_) | Op::Zeros(_) => Role::Free,
                Op::Input(_) | Op::State(_) | Op::AdjState(_) | Op::Bridge(_) => Role::Leaf,
                Op::Call(..) | Op::Neg(_) | Op::Bin(..) | Op::Deriv(..) => Role::Kernel,
                Op::Gemm { .. } | Op::GemmT { .. } | Op::Concat(_) => Role::Between,
                Op::Slice { .. } => Role::View,
            })
            .collect();
        let program = (0..graph.len())
            .map(|id| {
                (role[id] != Role::Free).then(|| match (id < c.backward.first, dynamic[id]) {
                    (true, false) => Program::Prepare,
                    (true, true) => Program::StepForward,
                    (false, true) => Program::StepBackward,
                    (false, false) => Program::Finish,
                })
            })
            .collect();
        let mut users = vec![Vec::new(); graph.len()];
        for (id, node) in graph.nodes.iter().enumerate() {
            // A bridge is filled by a store of the loop, not read as an operand.
            if matches!(node.op, Op::Bridge(_)) {
                continue;
            }
            for operand in node.op.operands() {
                users[operand].push(id);
            }
        }
        let mut scheduler = Scheduler {
            c,
            role,
            program,
            level: vec![0; graph.len()],
            users,
            roots: Vec::new(),
            post_loop: vec![false; graph.len()],
            loc: vec![None; graph.len()],
            buffers: Vec::new(),
            stacks: Vec::new(),
            roles: Roles::default(),
            fused: Vec::new(),
            folds: Vec::new(),
        };
        scheduler.assign_levels();
        scheduler
    }

    fn run(mut self) -> Plan {
        self.place_leaves();
        self.collect_roots();
        self.fuse_sums();
        self.fold_biases();
        self.place_concat_parts();
        self.place_fused_sums();
        self.place_values();
        self.drop_stores_in_place();
        let mut weight_grads = self.weight_grads();
        self.sum_biases_while_packing(&mut weight_grads);
        let mut prepare: Vec<Stage> = (0..self.c.ir.graph.len())
            .filter_map(|id| match (self.op(id), &self.loc[id]) {
                (Op::Param(p), Some(dst)) => Some(Stage::Broadcast {
                    param: *p,
                    dst: dst.clone(),
                }),
                _ => None,
            })
            .collect();
        prepare.extend(self.stages(Program::Prepare));
        let step_forward = self.stages(Program::StepForward);
        let mut step_backward = self.stages(Program::StepBackward);
        // A state whose previous value does not matter passes back no gradient.
        for (k, d) in self.c.backward.d_states.iter().enumerate() {
            if d.is_none() {
                let rows = Size::symbol(self.c.ir.states[k].sym);
                step_backward.insert(
                    0,
                    Stage::Zero {
                        dst: Loc::at(self.roles.d_prev[k]),
                        rows,
                    },
                );
            }
        }
        let finish = self.stages(Program::Finish);
        Plan {
            buffers: self.buffers,
            stacks: self.stacks,
            roles: self.roles,
            prepare,
            step_forward,
            step_backward,
            finish,
            weight_grads,
        }
    }

    fn op(&self, id: NodeId) -> &Op {
        self.c.ir.graph.op(id)
    }

    fn size(&self, id: NodeId) -> &Size {
        self.c.shapes.size(id)
    }

    fn same_program(&self, a: NodeId, b: NodeId) -> bool {
        self.program[a].is_some() && self.program[a] == self.program[b]
    }

    /// The level at which `o`'s value is available to a kernel of `user`'s program.
    fn ready_for_kernel(&self, o: NodeId, user: NodeId) -> usize {
        if self.same_program(o, user) && self.role[o] != Role::Leaf {
            self.level[o]
        } else {
            0
        }
    }

    /// The level at which `o`'s value is available to a GEMM or copy of `user`'s program:
    /// a kernel's output only after that kernel has run.
    fn ready_between(&self, o: NodeId, user: NodeId) -> usize {
        match self.role[o] {
            Role::Kernel if self.same_program(o, user) => self.level[o] + 1,
            _ => self.ready_for_kernel(o, user),
        }
    }

    fn assign_levels(&mut self) {
        for id in 0..self.c.ir.graph.len() {
            let operands = self.op(id).operands();
            self.level[id] = match self.role[id] {
                Role::Free | Role::Leaf => 0,
                // Rows of another value: complete only once whatever computes it has run.
                Role::View => self.ready_between(operands[0], id),
                Role::Kernel => operands
                    .iter()
                    .map(|&o| self.ready_for_kernel(o, id))
                    .max()
                    .unwrap_or(0),
                Role::Between => operands
                    .iter()
                    .map(|&o| self.ready_between(o, id))
                    .max()
                    .unwrap_or(0),
            };
        }
    }

    fn new_buffer(&mut self, rows: Size, cols: Cols, what: impl Into<String>) -> usize {
        self.buffers.push(Buffer {
            rows,
            cols,
            what: what.into(),
        });
        self.buffers.len() - 1
    }

    fn place_leaves(&mut self) {
        let ir = &self.c.ir;
        for (k, input) in ir.inputs.iter().enumerate() {
            let rows = Size::symbol(input.sym);
            let buf = self.new_buffer(rows.clone(), Cols::Steps, format!("input `{}`", input.name));
            self.roles.inputs.push(buf);
            let d = self.new_buffer(
                rows,
                Cols::Steps,
                format!("gradient of input `{}`", input.name),
            );
            self.roles.d_inputs.push(d);
            let _ = k;
        }
        for state in &ir.states {
            let rows = Size::symbol(state.sym);
            let name = &state.name;
            let prev = self.new_buffer(
                rows.clone(),
                Cols::Steps,
                format!("`{name}` before each step"),
            );
            let cur = self.new_buffer(rows.clone(), Cols::Batch, format!("`{name}` now"));
            let d = self.new_buffer(
                rows.clone(),
                Cols::Batch,
                format!("gradient of `{name}` now"),
            );
            let d_prev = self.new_buffer(
                rows,
                Cols::Batch,
                format!("gradient of `{name}` before the step"),
            );
            self.roles.prev.push(prev);
            self.roles.state.push(cur);
            self.roles.d_state.push(d);
            self.roles.d_prev.push(d_prev);
        }
        for id in 0..self.c.ir.graph.len() {
            self.loc[id] = match *self.op(id) {
                Op::Input(k) => Some(Loc::at(self.roles.inputs[k])),
                Op::State(k) => Some(Loc::at(self.roles.prev[k])),
                Op::AdjState(k) => Some(Loc::at(self.roles.d_state[k])),
                _ => None,
            };
        }
    }

    fn collect_roots(&mut self) {
        let (ir, backward) = (&self.c.ir, &self.c.backward);
        for (k, &new) in ir.new_states.iter().enumerate() {
            self.roots.push((
                Program::StepForward,
                new,
                Target::Loc(Loc::at(self.roles.state[k])),
            ));
        }
        for (k, d) in backward.d_states.iter().enumerate() {
            if let Some(d) = *d {
                self.roots.push((
                    Program::StepBackward,
                    d,
                    Target::Loc(Loc::at(self.roles.d_prev[k])),
                ));
            }
        }
        for (k, d) in backward.d_inputs.iter().enumerate() {
            if let Some(d) = *d {
                self.roots.push((
                    Program::Finish,
                    d,
                    Target::Loc(Loc::at(self.roles.d_inputs[k])),
                ));
            }
        }
        for (id, node) in ir.graph.nodes.iter().enumerate() {
            if let Op::Bridge(src) = node.op {
                self.roots
                    .push((Program::StepBackward, src, Target::LocOf(id)));
            }
        }
        for &(p, value) in &backward.vec_grads {
            let program = self.program[value].expect("a gradient is computed");
            self.roots.push((program, value, Target::Grad(p)));
        }
        for &(gemm, dz) in &backward.mat_grads {
            let Op::Gemm { vec, .. } = *self.op(gemm) else {
                unreachable!("weight gradient of a GEMM")
            };
            self.post_loop[dz] = true;
            self.post_loop[vec] = true;
        }
    }

    /// Finds the sums that their product can add onto (see `FusedSum`); each then runs
    /// between loops, as its product's stage. Its level is the product's either way:
    /// its term is ready before the product.
    fn fuse_sums(&mut self) {
        for sum in 0..self.c.ir.graph.len() {
            if let Some(fused) = self.fusable_sum(sum) {
                self.role[sum] = Role::Between;
                self.fused.push(fused);
            }
        }
    }

    /// `sum` as a `FusedSum`, if it is `term + S·v` (either way round) where the
    /// product is read by the sum alone, `term` by the sum and otherwise only inside
    /// the loop that computes it, and that loop runs before the product; neither is
    /// kept for another program or delivered anywhere.
    fn fusable_sum(&self, sum: NodeId) -> Option<FusedSum> {
        let Op::Bin(BinOp::Add, x, y) = *self.op(sum) else {
            return None;
        };
        let (term, product) = match (self.role[x], self.role[y]) {
            (Role::Kernel, Role::Between) => (x, y),
            (Role::Between, Role::Kernel) => (y, x),
            _ => return None,
        };
        let delivered = |id: NodeId| self.roots.iter().any(|(_, value, _)| *value == id);
        let only_in_its_loop = self.users[term].iter().all(|&u| {
            u == sum
                || (self.role[u] == Role::Kernel
                    && self.level[u] == self.level[term]
                    && self.size(u) == self.size(term)
                    && self.same_program(u, term))
        });
        let fits = self.role[sum] == Role::Kernel
            && matches!(self.op(product), Op::Gemm { .. } | Op::GemmT { .. })
            && self.same_program(term, sum)
            && self.same_program(product, sum)
            && self.level[term] < self.level[product]
            && self.users[product] == [sum]
            && only_in_its_loop
            && !self.users[sum]
                .iter()
                .any(|&u| matches!(self.op(u), Op::Concat(_)))
            && !delivered(term)
            && !delivered(product)
            && !self.post_loop[term]
            && !self.post_loop[product]
            && self.size(term) == self.size(sum)
            && self.size(product) == self.size(sum);
        fits.then_some(FusedSum { sum, term, product })
    }

    /// Finds the hoisted sums of a product's rows and biases (see `BiasFold`). Each
    /// product of the `Prepare` program whose value is read only through its blocks'
    /// rows (or whole, by one sum) gives its biases to the sums that read them; a
    /// block without a sum keeps plain product rows (zeroed before the GEMM adds).
    fn fold_biases(&mut self) {
        for gemm in 0..self.c.ir.graph.len() {
            let Some(bases) = self.bias_bases(gemm) else {
                continue;
            };
            let mut folds = Vec::new();
            for (base, start) in bases {
                if let Some((params, top, dead)) = self.bias_chain(base) {
                    folds.push((
                        BiasFold {
                            gemm,
                            start,
                            params,
                            top,
                        },
                        base,
                        dead,
                    ));
                }
            }
            for (fold, base, dead) in folds {
                // The sum reads the product's rows; the nodes it replaces are computed
                // by no program.
                self.role[fold.top] = Role::View;
                if base != gemm {
                    self.role[base] = Role::Free;
                }
                for id in dead {
                    self.role[id] = Role::Free;
                }
                self.users[gemm].push(fold.top);
                self.folds.push(fold);
            }
        }
    }

    /// Where `gemm`'s biases could start, if it is a product of `Prepare` read only
    /// whole by one node, or only through views of its blocks' rows: those readers,
    /// each with the first row it reads.
    fn bias_bases(&self, gemm: NodeId) -> Option<Vec<(NodeId, Size)>> {
        let Op::Gemm { blocks, .. } = self.op(gemm) else {
            return None;
        };
        if self.program[gemm] != Some(Program::Prepare)
            || self.in_fused_sum(gemm)
            || self.delivered(gemm)
            || self.post_loop[gemm]
        {
            return None;
        }
        let users = &self.users[gemm];
        if let [only] = users[..] {
            if !matches!(self.op(only), Op::Slice { .. }) {
                return Some(vec![(gemm, Size::zero())]);
            }
        }
        // Each view must be one block's rows, so that the biases go to that block.
        let mut blocks_at = Vec::new();
        let mut row = Size::zero();
        for block in blocks {
            let rows = &self.c.shapes.params[block.mat].0;
            blocks_at.push((row.clone(), rows.clone()));
            row = row.plus(rows);
        }
        users
            .iter()
            .map(|&u| match self.op(u) {
                Op::Slice { start, len, .. }
                    if blocks_at.contains(&(start.clone(), len.clone())) =>
                {
                    Some((u, start.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The sums `((base + b) + b') ...` of vector parameters onto `base`, if there are
    /// any and each node of the chain is read by the next alone: the parameters, the
    /// last sum, and the sums before it.
    fn bias_chain(&self, base: NodeId) -> Option<(Vec<usize>, NodeId, Vec<NodeId>)> {
        let (mut params, mut dead, mut at) = (Vec::new(), Vec::new(), base);
        while let Some((next, bias)) = self.bias_added(at, base) {
            if at != base {
                dead.push(at);
            }
            params.push(bias);
            at = next;
        }
        let top_fits = !self.delivered(at)
            && !self.in_fused_sum(at)
            && !self.users[at]
                .iter()
                .any(|&u| matches!(self.op(u), Op::Concat(_)));
        (!params.is_empty() && top_fits).then_some((params, at, dead))
    }

    /// The sum that adds a vector parameter to `at` (a link of `base`'s chain), and
    /// the parameter, if `at` is read by that sum alone, in `Prepare`, and neither is
    /// kept for anything else.
    fn bias_added(&self, at: NodeId, base: NodeId) -> Option<(NodeId, usize)> {
        let [next] = self.users[at][..] else {
            return None;
        };
        let Op::Bin(BinOp::Add, a, b) = *self.op(next) else {
            return None;
        };
        let other = if a == at { b } else { a };
        let bias = match *self.op(other) {
            Op::Param(p) if self.c.shapes.params[p].1.is_none() && other != at => p,
            _ => return None,
        };
        let fits = self.role[next] == Role::Kernel
            && !self.in_fused_sum(next)
            && self.program[next] == Some(Program::Prepare)
            && self.size(next) == self.size(base)
            && !self.delivered(at)
            && !self.post_loop[at];
        fits.then_some((next, bias))
    }

    /// Whether `id` is a fused sum's sum, term or product.
    fn in_fused_sum(&self, id: NodeId) -> bool {
        self.fused
            .iter()
            .any(|f| f.sum == id || f.term == id || f.product == id)
    }

    /// Whether a program delivers `id` somewhere (a root).
    fn delivered(&self, id: NodeId) -> bool {
        self.roots.iter().any(|(_, value, _)| *value == id)
    }

    /// A fused sum's place (where its program delivers it, as for a GEMM, or a buffer
    /// of its own) is its term's and its product's as well.
    fn place_fused_sums(&mut self) {
        for FusedSum { sum, term, product } in self.fused.clone() {
            let cols = if self.needs_steps(sum) {
                Cols::Steps
            } else {
                Cols::Batch
            };
            let loc = match self.direct_target(sum, &cols) {
                Some(target) => target,
                None => {
                    let text = self.c.ir.graph.nodes[sum].text.clone();
                    Loc::at(self.new_buffer(self.size(sum).clone(), cols, text))
                }
            };
            for id in [sum, term, product] {
                assert!(
                    self.loc[id].is_none(),
                    "a fused sum's node placed before it"
                );
                self.loc[id] = Some(loc.clone());
            }
        }
    }

    fn fused_sum(&self, sum: NodeId) -> Option<&FusedSum> {
        self.fused.iter().find(|f| f.sum == sum)
    }

    /// Whether `id`'s value is read outside its program: by another program, or after
    /// the loop.
    /// Reads through a view of `id` (rows of a stacked product) count as reads of `id`.
    fn crosses(&self, id: NodeId) -> bool {
        let program = self.program[id];
        self.post_loop[id]
            || self.users[id].iter().any(|&u| {
                self.program[u] != program || (self.role[u] == Role::View && self.crosses(u))
            })
            || self
                .roots
                .iter()
                .any(|(p, v, _)| *v == id && Some(*p) != program)
    }

    /// Whether `id`'s buffer must hold every step: its program runs over all steps at
    /// once, or another program reads it.
    fn needs_steps(&self, id: NodeId) -> bool {
        matches!(self.program[id], Some(Program::Prepare | Program::Finish)) || self.crosses(id)
    }

    /// Whether a kernel node must be stored at all (rather than stay a loop local).
    fn needs_store(&self, id: NodeId) -> bool {
        self.crosses(id)
            || self.users[id].iter().any(|&u| {
                !matches!(self.role[u], Role::Kernel)
                    || self.level[u] != self.level[id]
                    || !self.same_program(u, id)
            })
    }

    /// A concatenation's parts are written straight into its buffer where they can be.
    fn place_concat_parts(&mut self) {
        // Concatenations of bridges last, so that their twins are placed (see
        // `stored_twin`).
        let (of_bridges, others): (Vec<NodeId>, Vec<NodeId>) = (0..self.c.ir.graph.len())
            .filter(|&id| matches!(self.op(id), Op::Concat(_)))
            .partition(|&id| self.bridge_sources(id).is_some());
        for id in others.into_iter().chain(of_bridges) {
            let Op::Concat(parts) = self.op(id).clone() else {
                unreachable!("filtered")
            };
            if let Some(loc) = self.stored_twin(id) {
                let sources = self.bridge_sources(id).expect("a concatenation of bridges");
                for (&part, source) in parts.iter().zip(sources) {
                    self.loc[part] = self.loc[source].clone();
                }
                self.loc[id] = Some(loc);
                continue;
            }
            if self.place_sources_in_concat(id, &parts) {
                continue;
            }
            let cols = if self.needs_steps(id)
                || parts
                    .iter()
                    .any(|&p| self.placeable(p, id) && self.needs_steps(p))
            {
                Cols::Steps
            } else {
                Cols::Batch
            };
            let text = self.c.ir.graph.nodes[id].text.clone();
            let buf = self.new_buffer(self.size(id).clone(), cols, text);
            self.loc[id] = Some(Loc::at(buf));
            let mut row = Size::zero();
            for part in parts {
                if self.placeable(part, id) {
                    self.loc[part] = Some(Loc {
                        buf,
                        row: row.clone(),
                    });
                }
                row = row.plus(self.size(part));
            }
        }
    }

    /// The sources of a concatenation's parts, when every part is a bridge.
    fn bridge_sources(&self, concat: NodeId) -> Option<Vec<NodeId>> {
        let Op::Concat(parts) = self.op(concat) else {
            return None;
        };
        parts
            .iter()
            .map(|&part| match *self.op(part) {
                Op::Bridge(src) => Some(src),
                _ => None,
            })
            .collect()
    }

    /// Where the bridges' sources of a concatenation of bridges already lie, in its
    /// order, rows after rows of one buffer kept for every step: the concatenation
    /// reads them there. The LSTM's hoisted input projection and its recurrent
    /// product have the same gradient, the four gates' dz; stored as two stacks, the
    /// loop wrote it twice at every step and the weight gradients packed it twice.
    fn stored_twin(&self, concat: NodeId) -> Option<Loc> {
        let sources = self.bridge_sources(concat)?;
        let first = self.loc[*sources.first()?].clone()?;
        let buffer = &self.buffers[first.buf];
        if first.row != Size::zero()
            || buffer.cols != Cols::Steps
            || buffer.rows != *self.size(concat)
        {
            return None;
        }
        let mut row = Size::zero();
        for &src in &sources {
            let at = Loc {
                buf: first.buf,
                row: row.clone(),
            };
            if self.loc[src].as_ref() != Some(&at) {
                return None;
            }
            row = row.plus(self.size(src));
        }
        Some(first)
    }

    /// A concatenation of bridges whose sources are loop values kept for every step and
    /// not yet placed: the sources are stored straight into its rows, and it reads
    /// them there (its twin made, rather than found as `stored_twin` finds it). The
    /// MGU's dz_f and dz_n, each the gradient of a recurrent product of its own, are
    /// together the hoisted input projection's: stored apart and again as a stack, the
    /// loop wrote each twice and the weight gradients packed each twice.
    fn place_sources_in_concat(&mut self, concat: NodeId, parts: &[NodeId]) -> bool {
        let Some(sources) = self.bridge_sources(concat) else {
            return false;
        };
        let distinct = sources
            .iter()
            .enumerate()
            .all(|(k, s)| !sources[..k].contains(s));
        let fits = distinct
            && sources.iter().all(|&src| {
                self.loc[src].is_none()
                    && self.role[src] == Role::Kernel
                    && self.needs_store(src)
                    && self.needs_steps(src)
            });
        if !fits {
            return false;
        }
        let text = self.c.ir.graph.nodes[concat].text.clone();
        let buf = self.new_buffer(self.size(concat).clone(), Cols::Steps, text);
        let mut row = Size::zero();
        for (&part, src) in parts.iter().zip(sources) {
            let at = Loc {
                buf,
                row: row.clone(),
            };
            self.loc[src] = Some(at.clone());
            self.loc[part] = Some(at);
            row = row.plus(self.size(src));
        }
        self.loc[concat] = Some(Loc::at(buf));
        true
    }

    fn placeable(&self, part: NodeId, concat: NodeId) -> bool {
        let fits = match self.role[part] {
            Role::Kernel => self.same_program(part, concat),
            Role::Leaf => matches!(self.op(part), Op::Bridge(_)),
            _ => false,
        };
        fits && self.loc[part].is_none()
    }

    fn place_values(&mut self) {
        for id in 0..self.c.ir.graph.len() {
            if self.loc[id].is_some() {
                continue;
            }
            if let Some(loc) = self.stored_bridge_source(id) {
                self.loc[id] = Some(loc);
                continue;
            }
            let text = self.c.ir.graph.nodes[id].text.clone();
            let cols = if self.needs_steps(id) {
                Cols::Steps
            } else {
                Cols::Batch
            };
            match self.role[id] {
                // A parameter vector is read in place by kernels; a GEMM, a copy or a
                // weight gradient needs it in a buffer, broadcast over the columns
                // once, before the loop.
                Role::Free
                    if matches!(self.op(id), Op::Param(_))
                        && (self.post_loop[id]
                            || self.users[id]
                                .iter()
                                .any(|&u| self.role[u] == Role::Between)) =>
                {
                    let buf = self.new_buffer(self.size(id).clone(), Cols::Steps, text);
                    self.loc[id] = Some(Loc::at(buf));
                }
                Role::Free => {}
                Role::View => {
                    let (of, start) = match self.folds.iter().find(|f| f.top == id) {
                        // A folded sum: rows of the product started from its biases
                        // (placed first, being of `Prepare`).
                        Some(fold) => (fold.gemm, fold.start.clone()),
                        None => {
                            let Op::Slice { of, start, .. } = self.op(id).clone() else {
                                unreachable!()
                            };
                            (of, start)
                        }
                    };
                    let base = self.loc[of].clone().unwrap_or_else(|| {
                        // Rows of a loop local: it is stored for the view's sake.
                        let buf = self.new_buffer(self.size(of).clone(), Cols::Steps, text.clone());
                        self.loc[of] = Some(Loc::at(buf));
                        Loc::at(buf)
                    });
                    self.loc[id] = Some(base.offset(&start));
                }
                Role::Leaf | Role::Between => {
                    let loc = match self.direct_target(id, &cols) {
                        Some(target) => target,
                        None => Loc::at(self.new_buffer(self.size(id).clone(), cols, text)),
                    };
                    self.loc[id] = Some(loc);
                }
                Role::Kernel if self.needs_store(id) => {
                    let buf = self.new_buffer(self.size(id).clone(), cols, text);
                    self.loc[id] = Some(Loc::at(buf));
                }
                Role::Kernel => {}
            }
        }
    }

    /// Where a bridge's source is already kept for every step, if it is: the bridge
    /// reads it there rather than from a copy. An Elman RNN's dz is both the
    /// recurrent product's gradient, kept for its weight gradient, and (bridged) the
    /// hoisted input projection's; the loop stored it twice. (Stacked gates go through
    /// `stored_twin`.)
    fn stored_bridge_source(&self, id: NodeId) -> Option<Loc> {
        let Op::Bridge(src) = *self.op(id) else {
            return None;
        };
        let loc = self.loc[src].clone()?;
        (self.buffers[loc.buf].cols == Cols::Steps).then_some(loc)
    }

    /// The stores that would copy a value onto itself: bridges that read their source
    /// where it is (`stored_bridge_source`, `stored_twin`).
    fn drop_stores_in_place(&mut self) {
        let loc = &self.loc;
        self.roots.retain(|(_, value, target)| match target {
            Target::LocOf(node) => loc[*node] != loc[*value],
            Target::Loc(_) | Target::Grad(_) => true,
        });
    }

    /// Where a GEMM can write its product straight into: the one place its program
    /// delivers it to (the gradient of a previous state or of an input), when that
    /// buffer holds the same columns. A copy per step (and per pass) less.
    fn direct_target(&self, id: NodeId, cols: &Cols) -> Option<Loc> {
        if !matches!(self.op(id), Op::Gemm { .. } | Op::GemmT { .. })
            && self.fused_sum(id).is_none()
        {
            return None;
        }
        let mut targets = self.roots.iter().filter(|(_, value, _)| *value == id);
        let (program, _, Target::Loc(dst)) = targets.next()? else {
            return None;
        };
        let fits = targets.next().is_none()
            && Some(*program) == self.program[id]
            && dst.row == Size::zero()
            && self.buffers[dst.buf].rows == *self.size(id)
            && self.buffers[dst.buf].cols == *cols;
        fits.then(|| dst.clone())
    }

    fn stack_for(&mut self, blocks: &[Block], vec_size: &Size) -> usize {
        if let Some(s) = self.stacks.iter().position(|s| s.blocks == blocks) {
            return s;
        }
        let rows = blocks.iter().fold(Size::zero(), |acc, b| {
            acc.plus(&self.c.shapes.params[b.mat].0)
        });
        let names: Vec<&str> = blocks
            .iter()
            .map(|b| self.c.ir.params[b.mat].name.as_str())
            .collect();
        let buf = self.new_buffer(
            rows,
            Cols::Fixed(vec_size.clone()),
            format!("[{}] stacked", names.join("; ")),
        );
        self.stacks.push(Stack {
            blocks: blocks.to_vec(),
            buf,
        });
        self.stacks.len() - 1
    }

    fn weight_grads(&mut self) -> Vec<WeightGrad> {
        let mut grads: Vec<WeightGrad> = Vec::new();
        for &(gemm, dz) in &self.c.backward.mat_grads.clone() {
            let Op::Gemm { blocks, vec } = self.op(gemm).clone() else {
                unreachable!()
            };
            let dz_loc = self.steps_loc(dz);
            let v_loc = self.steps_loc(vec);
            let mut row = Size::zero();
            let mut group: Option<WeightGrad> = None;
            for block in blocks {
                let (rows, cols) = self.c.shapes.params[block.mat].clone();
                let (col_start, cols) = block
                    .cols
                    .clone()
                    .unwrap_or((Size::zero(), cols.expect("a matrix")));
                // A parameter twice in one product (its gradient borrowed twice) starts
                // a stack of its own.
                if let Some(g) = group.take_if(|g| g.blocks.iter().any(|b| b.param == block.mat)) {
                    grads.push(g);
                }
                group
                    .get_or_insert_with(|| WeightGrad {
                        dz: dz_loc.offset(&row),
                        v: v_loc.clone(),
                        cols,
                        blocks: Vec::new(),
                        sums: Vec::new(),
                    })
                    .blocks
                    .push(GradBlock {
                        param: block.mat,
                        col_start,
                        rows: rows.clone(),
                    });
                row = row.plus(&rows);
            }
            grads.extend(group);
        }
        grads
    }

    /// Moves the gradients of vector parameters that are a weight gradient's rows of dz
    /// (one block's), summed over all steps after the loop, from the `Finish` loop to
    /// that weight gradient (`WeightGrad::sums`), which sums them while it packs dz.
    /// The LSTM's eight biases were a loop over every column of its own, its last three
    /// rows one by one (an accumulating loop may not run rows twice): 2.5-4.5% of the
    /// tiny LSTM's samples.
    fn sum_biases_while_packing(&mut self, grads: &mut [WeightGrad]) {
        let roots = std::mem::take(&mut self.roots);
        for (program, value, target) in roots {
            let summed = match (program, &target, &self.loc[value]) {
                (Program::Finish, Target::Grad(p), Some(loc))
                    if self.role[value] == Role::Leaf
                        && self.buffers[loc.buf].cols == Cols::Steps =>
                {
                    self.weight_grad_rows(grads, loc, self.size(value).clone())
                        .map(|(w, row)| grads[w].sums.push(GradSum { param: *p, row }))
                }
                _ => None,
            };
            if summed.is_none() {
                self.roots.push((program, value, target));
            }
        }
    }

    /// The first weight gradient one of whose blocks' rows of dz are `rows` rows at
    /// `loc`, and that block's first row among its rows of dz.
    fn weight_grad_rows(
        &self,
        grads: &[WeightGrad],
        loc: &Loc,
        rows: Size,
    ) -> Option<(usize, Size)> {
        grads.iter().enumerate().find_map(|(w, grad)| {
            let mut row = Size::zero();
            for block in &grad.blocks {
                if grad.dz.offset(&row) == *loc && block.rows == rows {
                    return Some((w, row));
                }
                row = row.plus(&block.rows);
            }
            None
        })
    }

    /// Where `id` is kept for all steps; a value that only lives for the current step
    /// (a gradient arriving from the next step) is copied out at every step.
    fn steps_loc(&mut self, id: NodeId) -> Loc {
        let loc = self.loc[id].clone().expect("a stored value");
        if self.buffers[loc.buf].cols == Cols::Steps {
            return loc;
        }
        let text = format!("{} at every step", self.c.ir.graph.nodes[id].text);
        let buf = self.new_buffer(self.size(id).clone(), Cols::Steps, text);
        let program = self.program[id].expect("a computed value");
        self.roots.push((program, id, Target::Loc(Loc::at(buf))));
        Loc::at(buf)
    }

    fn stages(&mut self, program: Program) -> Vec<Stage> {
        let graph_len = self.c.ir.graph.len();
        let in_program: Vec<NodeId> = (0..graph_len)
            .filter(|&id| self.program[id] == Some(program))
            .collect();
        let roots: Vec<(NodeId, Target, usize)> = self
            .roots
            .iter()
            .filter(|(p, ..)| *p == program)
            .map(|(_, value, target)| {
                let level = if self.program[*value] == Some(program) {
                    self.level[*value]
                } else {
                    0
                };
                (*value, target.clone(), level)
            })
            .collect();
        let max_level = in_program
            .iter()
            .map(|&id| self.level[id])
            .chain(roots.iter().map(|r| r.2))
            .max()
            .unwrap_or(0);
        let mut stages = Vec::new();
        for level in 0..=max_level {
            let between: Vec<NodeId> = in_program
                .iter()
                .copied()
                .filter(|&id| self.level[id] == level && self.role[id] == Role::Between)
                .collect();
            for id in between {
                self.between_stage(id, &mut stages);
            }
            // One fused loop per size.
            let mut sizes: Vec<Size> = Vec::new();
            for &id in &in_program {
                if self.level[id] == level
                    && self.role[id] == Role::Kernel
                    && !sizes.contains(self.size(id))
                {
                    sizes.push(self.size(id).clone());
                }
            }
            for (value, _, root_level) in &roots {
                if *root_level == level && !sizes.contains(self.size(*value)) {
                    sizes.push(self.size(*value).clone());
                }
            }
            for rows in sizes {
                let members: Vec<NodeId> = in_program
                    .iter()
                    .copied()
                    .filter(|&id| {
                        self.level[id] == level
                            && self.role[id] == Role::Kernel
                            && *self.size(id) == rows
                    })
                    .collect();
                let these_roots: Vec<(NodeId, Target)> = roots
                    .iter()
                    .filter(|(v, _, l)| *l == level && *self.size(*v) == rows)
                    .map(|(v, t, _)| (*v, t.clone()))
                    .collect();
                let kernel = self.kernel(rows, &members, &these_roots);
                if !kernel.body.is_empty() {
                    stages.push(Stage::Kernel(kernel));
                }
            }
        }
        stages
    }

    fn between_stage(&mut self, id: NodeId, stages: &mut Vec<Stage>) {
        if self.fused_sum(id).is_some() {
            return; // its product's stage adds up the sum
        }
        let dst = self.loc[id].clone().expect("between ops own a buffer");
        let accumulate = self.fused.iter().any(|f| f.product == id);
        match self.op(id).clone() {
            Op::Gemm { blocks, vec } => {
                let stack = self.stack_for(&blocks, &self.size(vec).clone());
                let src = self.loc[vec].clone().expect("a GEMM's vector is stored");
                stages.push(Stage::Gemm {
                    stack,
                    transpose: false,
                    src,
                    dst,
                    accumulate,
                    biases: self.biases_of(id),
                });
            }
            Op::GemmT { blocks, vec } => {
                let cols = self.size(id).clone();
                let stack = self.stack_for(&blocks, &cols);
                let src = self.loc[vec].clone().expect("a GEMM's vector is stored");
                stages.push(Stage::Gemm {
                    stack,
                    transpose: true,
                    src,
                    dst,
                    accumulate,
                    biases: Vec::new(),
                });
            }
            Op::Concat(parts) => {
                let mut row = Size::zero();
                for part in parts {
                    let rows = self.size(part).clone();
                    let at = dst.offset(&row);
                    match self.loc[part].clone() {
                        Some(loc) if loc == at => {}
                        Some(src) => stages.push(Stage::Copy {
                            src,
                            dst: at,
                            rows: rows.clone(),
                        }),
                        None if matches!(self.op(part), Op::Zeros(_)) => stages.push(Stage::Zero {
                            dst: at,
                            rows: rows.clone(),
                        }),
                        None => unreachable!("a concatenated value is stored or placed"),
                    }
                    row = row.plus(&rows);
                }
            }
            other => unreachable!("{other:?} is not run between loops"),
        }
    }

    /// A product's folded biases (see `BiasFold`), by the rows they start.
    fn biases_of(&self, gemm: NodeId) -> Vec<Biases> {
        self.folds
            .iter()
            .filter(|f| f.gemm == gemm)
            .map(|f| Biases {
                row: f.start.clone(),
                params: f.params.clone(),
            })
            .collect()
    }

    fn kernel(&self, rows: Size, members: &[NodeId], roots: &[(NodeId, Target)]) -> Kernel {
        let operand = |o: NodeId| -> Operand {
            match self.op(o) {
                Op::Lit(bits) => Operand::Lit(f64::from_bits(*bits)),
                Op::Param(p) => Operand::Param(*p),
                Op::Zeros(_) => Operand::Lit(0.0),
                _ if members.contains(&o) => Operand::Local(o),
                _ => Operand::Load(
                    self.loc[o]
                        .clone()
                        .unwrap_or_else(|| panic!("node {o} is neither local nor stored")),
                ),
            }
        };
        let mut body = Vec::new();
        for &id in members {
            let op = match self.op(id) {
                Op::Call(f, a) => KOp::Call(*f, operand(*a)),
                Op::Deriv(f, a) => KOp::Deriv(*f, operand(*a)),
                Op::Neg(a) => KOp::Neg(operand(*a)),
                Op::Bin(op, a, b) => KOp::Bin(*op, operand(*a), operand(*b)),
                other => unreachable!("{other:?} in a kernel"),
            };
            body.push(KStmt::Let { id, op });
            if let Some(dst) = &self.loc[id] {
                body.push(KStmt::Store {
                    value: Operand::Local(id),
                    dst: dst.clone(),
                });
            }
        }
        for (value, target) in roots {
            if let (Target::Loc(dst), Some(at)) = (target, &self.loc[*value]) {
                if dst == at && !members.contains(value) {
                    continue; // written there by the stage that computed it
                }
            }
            let value = operand(*value);
            body.push(match target {
                Target::Loc(dst) => KStmt::Store {
                    value,
                    dst: dst.clone(),
                },
                Target::LocOf(node) => KStmt::Store {
                    value,
                    dst: self.loc[*node].clone().expect("a bridge is placed"),
                },
                Target::Grad(p) => KStmt::Accumulate { param: *p, value },
            });
        }
        Kernel { rows, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{compile_full, lstm, mixed_biases};

    fn lstm_plan() -> Plan {
        schedule(&compile_full(lstm()))
    }

    /// The minimal gated unit's plan: two recurrent products, the second of a gate's
    /// product with the state.
    fn mgu_plan() -> Plan {
        schedule(&compile_full(quote::quote! {
            fn mgu(x: Input, h: State) {
                let f = sigmoid(W_f * x + b_f + U_f * h);
                let n = tanh(W_n * x + b_n + U_n * (f * h));
                h = (1.0 - f) * h + f * n;
            }
        }))
    }

    fn count(stages: &[Stage], f: impl Fn(&Stage) -> bool) -> usize {
        stages.iter().filter(|s| f(s)).count()
    }

    /// The biases that a `Prepare` stage, the input projection, starts from: it must
    /// be a product that stores (does not add onto) its rows.
    fn projection_biases<'p>(stage: Option<&'p Stage>, plan: &Plan) -> &'p [Biases] {
        match stage {
            Some(Stage::Gemm {
                biases,
                accumulate: false,
                ..
            }) => biases,
            _ => panic!("the projection: {:#?}", plan.prepare),
        }
    }

    #[test]
    fn lstm_step_is_one_gemm_and_one_fused_loop() {
        let plan = lstm_plan();
        let gemm = |s: &Stage| matches!(s, Stage::Gemm { .. });
        let kernel = |s: &Stage| matches!(s, Stage::Kernel(_));
        // Before the loop: the input projection of all steps, starting from each
        // gate's two biases (no loop over the columns to add them).
        assert_eq!(count(&plan.prepare, gemm), 1);
        assert_eq!(count(&plan.prepare, kernel), 0);
        let biases = projection_biases(plan.prepare.last(), &plan);
        assert_eq!(biases.len(), 4);
        assert!(biases.iter().all(|b| b.params.len() == 2));
        // Per step forward: W_h* stacked, then all gate math in one loop.
        assert_eq!(count(&plan.step_forward, gemm), 1);
        assert_eq!(count(&plan.step_forward, kernel), 1);
        // Per step backward: one loop, then the stacked transposed GEMM, which writes
        // dh straight into the gradient of the previous `h` (no copy after it).
        assert_eq!(count(&plan.step_backward, gemm), 1);
        assert_eq!(count(&plan.step_backward, kernel), 1);
        let Some(Stage::Gemm { dst, .. }) = plan.step_backward.last() else {
            panic!(
                "the step backward ends with its GEMM: {:#?}",
                plan.step_backward
            )
        };
        assert_eq!(dst.buf, plan.roles.d_prev[0]);
        // Weight gradients after the loop: one GEMM per stack, x's and h's, of four
        // gates each.
        assert_eq!(plan.weight_grads.len(), 2);
        assert!(plan.weight_grads.iter().all(|w| w.blocks.len() == 4));
        assert_eq!(plan.stacks.len(), 2);
        // Both read one dz: x's stack gets it through bridges (its product is hoisted
        // out of the loop), h's directly, and the loop stores it once.
        assert_eq!(plan.weight_grads[0].dz, plan.weight_grads[1].dz);
        // The eight biases' gradients are sums of dz's gates' rows, gathered while the
        // first product packs dz: the finish has no loop.
        let sums: Vec<usize> = plan.weight_grads.iter().map(|w| w.sums.len()).collect();
        assert_eq!(sums, [8, 0], "{:#?}", plan.weight_grads);
        assert_eq!(count(&plan.finish, kernel), 0, "{:#?}", plan.finish);
        let Some(Stage::Kernel(step)) = plan.step_backward.first() else {
            panic!("the step backward starts with its loop")
        };
        let stores_of_dz = step
            .body
            .iter()
            .filter(
                |s| matches!(s, KStmt::Store { dst, .. } if dst.buf == plan.weight_grads[0].dz.buf),
            )
            .count();
        assert_eq!(stores_of_dz, 4, "one store per gate: {:#?}", step.body);
    }

    /// Whether a stage is a product added onto its destination.
    fn adds(stage: &Stage) -> bool {
        matches!(
            stage,
            Stage::Gemm {
                accumulate: true,
                ..
            }
        )
    }

    /// The MGU's gradient of the previous `h` is a loop's term plus `U_fᵀ dz_f`: the
    /// loop stores the term where that gradient goes, and the product adds onto it,
    /// with no loop for the sum.
    #[test]
    fn a_sum_with_a_product_runs_as_the_product_added_onto_its_term() {
        let plan = mgu_plan();
        let kernel = |s: &Stage| matches!(s, Stage::Kernel(_));
        let steps = &plan.step_backward;
        assert_eq!(count(steps, adds), 1, "{steps:#?}");
        assert_eq!(count(steps, kernel), 2, "{steps:#?}");
        let Some(Stage::Gemm { dst, .. }) = steps.last() else {
            panic!("the step backward ends with the product that adds: {steps:#?}")
        };
        let d_prev = plan.roles.d_prev[0];
        assert_eq!(*dst, Loc::at(d_prev));
        let Some(Stage::Kernel(before)) = steps.iter().rev().nth(1) else {
            panic!("a loop before the last product: {steps:#?}")
        };
        let stores_term = before
            .body
            .iter()
            .any(|s| matches!(s, KStmt::Store { dst, .. } if dst.buf == d_prev));
        assert!(stores_term, "{:#?}", before.body);
        // Forward, each sum's other term is the hoisted projection (of another
        // program): the products do not add.
        assert_eq!(count(&plan.step_forward, adds), 0);
    }

    /// The MGU's dz_f and dz_n are the gradients of two recurrent products and,
    /// stacked, of the hoisted input projection: the loops store each once, into the
    /// stack's rows, and all three weight gradients read them there.
    #[test]
    fn gradients_of_separate_products_are_stored_once_as_their_stack() {
        let plan = mgu_plan();
        let grads = &plan.weight_grads;
        assert_eq!(grads.len(), 3, "{grads:#?}");
        let stack = grads
            .iter()
            .find(|w| w.blocks.len() == 2)
            .expect("W_f and W_n stacked");
        assert!(
            grads.iter().all(|w| w.dz.buf == stack.dz.buf),
            "one dz for all: {grads:#?}"
        );
        let stores_of_dz: usize = plan
            .step_backward
            .iter()
            .map(|stage| match stage {
                Stage::Kernel(k) => k
                    .body
                    .iter()
                    .filter(|s| matches!(s, KStmt::Store { dst, .. } if dst.buf == stack.dz.buf))
                    .count(),
                _ => 0,
            })
            .sum();
        assert_eq!(
            stores_of_dz, 2,
            "one store per gate: {:#?}",
            plan.step_backward
        );
    }

    /// Each hoisted sum of a block's rows and biases starts the projection from its
    /// biases: two of them, one, or none (that block's rows start from zero); a sum
    /// read elsewhere as well ends its chain, and what adds onto it stays a loop.
    #[test]
    fn hoisted_biases_start_the_projection() {
        let plan = schedule(&compile_full(mixed_biases()));
        let biases = projection_biases(plan.prepare.first(), &plan);
        let mut params: Vec<usize> = biases.iter().map(|b| b.params.len()).collect();
        params.sort_unstable();
        assert_eq!(params, [1, 1, 2], "{biases:#?}");
        // `r = q + b_r` reads `q`, which the step reads too: a loop of its own.
        assert_eq!(
            count(&plan.prepare, |s| matches!(s, Stage::Kernel(_))),
            1,
            "{:#?}",
            plan.prepare
        );
    }

    /// A term that the product itself reads (`a + V * a`) must stay as it is: the sum
    /// runs as a loop.
    #[test]
    fn a_product_of_its_own_term_is_not_added_onto_it() {
        let plan = schedule(&compile_full(quote::quote! {
            fn cell(x: Input, h: State) {
                let a = tanh(W * x + U * h);
                h = a + V * a;
            }
        }));
        assert_eq!(
            count(&plan.step_forward, adds),
            0,
            "{:#?}",
            plan.step_forward
        );
        let kernels = count(&plan.step_forward, |s| matches!(s, Stage::Kernel(_)));
        assert_eq!(kernels, 2, "{:#?}", plan.step_forward);
    }

    /// The LSTM's steps read the gates' products (or gradients) and write other
    /// buffers: their rows may run twice. The finish accumulates the biases' gradients.
    #[test]
    fn only_kernels_that_read_nothing_they_write_may_rerun_rows() {
        let plan = lstm_plan();
        let kernels = |stages: &[Stage]| -> Vec<bool> {
            stages
                .iter()
                .filter_map(|s| match s {
                    Stage::Kernel(k) => Some(k.rows_can_rerun()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(kernels(&plan.step_forward), vec![true]);
        assert_eq!(kernels(&plan.step_backward), vec![true]);
        // A bias added after the products gathers its gradient in a loop.
        let biased = schedule(&compile_full(quote::quote! {
            fn cell(x: Input, h: State) {
                h = tanh(W * x + U * h) + b;
            }
        }));
        let accumulating = biased.step_backward.iter().chain(&biased.finish).find(|s| {
            matches!(s, Stage::Kernel(k)
                if k.body.iter().any(|s| matches!(s, KStmt::Accumulate { .. })))
        });
        let Some(Stage::Kernel(accumulating)) = accumulating else {
            panic!("a loop accumulates b's gradient: {biased:#?}")
        };
        assert!(!accumulating.rows_can_rerun());
        // A kernel that updates a value in place may not.
        let Some(Stage::Kernel(mut kernel)) = plan
            .step_forward
            .iter()
            .find(|s| matches!(s, Stage::Kernel(_)))
            .cloned()
        else {
            unreachable!("checked above")
        };
        let Some(KStmt::Store { dst, .. }) = kernel
            .body
            .iter()
            .find(|s| matches!(s, KStmt::Store { .. }))
            .cloned()
        else {
            panic!("the step forward stores its state")
        };
        kernel.body.insert(
            0,
            KStmt::Let {
                id: 0,
                op: KOp::Neg(Operand::Load(dst)),
            },
        );
        assert!(!kernel.rows_can_rerun());
    }

    #[test]
    fn the_step_keeps_exactly_what_backward_reads() {
        let plan = lstm_plan();
        let mut kept: Vec<usize> = Vec::new();
        for stage in &plan.step_forward {
            let Stage::Kernel(kernel) = stage else {
                continue;
            };
            for stmt in &kernel.body {
                if let KStmt::Store { dst, .. } = stmt {
                    if plan.buffers[dst.buf].cols == Cols::Steps && !kept.contains(&dst.buf) {
                        kept.push(dst.buf);
                    }
                }
            }
        }
        let what: Vec<&str> = kept
            .iter()
            .map(|&b| plan.buffers[b].what.as_str())
            .collect();
        // i, f, g, o and tanh(c); the pre-activations and f * c stay loop locals.
        assert_eq!(kept.len(), 5, "kept: {what:#?}");
        assert!(what.contains(&"tanh(c)"), "kept: {what:#?}");
    }
}
