//! Stage 8: the generated code. The struct and its gradients type with a `pub` field per
//! parameter, a constructor, and the runtime's `Cell` trait, whose four methods are the
//! plan's four programs: stacked GEMMs through the tape, and each kernel a fused loop.

use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

use crate::compile::Compiled;
use crate::func::Func;
use crate::ir::CellIr;
use crate::parse::{BinOp, CellAst};
use crate::plan::{Cols, KOp, KStmt, Kernel, Loc, Operand, Plan, Program, Stage};
use crate::size::Size;

/// `lstm_cell` → `LstmCell`.
pub fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().expect("non-empty").to_uppercase();
            first.chain(chars).collect::<String>()
        })
        .collect()
}

fn type_names(ast: &CellAst) -> (Ident, Ident) {
    let name = format_ident!(
        "{}",
        camel_case(&ast.name.to_string()),
        span = ast.name.span()
    );
    let grads = format_ident!("{}Grads", name, span = ast.name.span());
    (name, grads)
}

/// On error: the type still exists, with the trait impls and a `new` of the right
/// arity, so that uses of it elsewhere do not add errors of their own.
pub fn fallback(ast: &CellAst) -> TokenStream {
    let (name, grads) = type_names(ast);
    let vis = &ast.vis;
    let mut extra: Vec<String> = Vec::new();
    for size in ast
        .args
        .iter()
        .filter_map(|a| a.size.as_ref())
        .map(|s| s.to_string())
    {
        if size != "I" && size != "H" && !extra.contains(&size) {
            extra.push(size);
        }
    }
    let extra = extra.iter().map(|s| format_ident!("_{}", s.to_lowercase()));
    quote! {
        #[derive(Clone, Debug)]
        #vis struct #name<T = f32>(::core::marker::PhantomData<T>);
        #[derive(Clone, Debug)]
        #vis struct #grads<T = f32>(::core::marker::PhantomData<T>);
        impl<T> #name<T> {
            /// Not available: the cell's equations have errors.
            pub fn new(_input_size: usize, _hidden_size: usize, #(#extra: usize,)* _rng: &mut ::rnn_runtime::Rng) -> Self {
                ::core::panic!("the cell has compile errors")
            }
        }
        ::rnn_runtime::__fallback_cell!(#name, #grads);
    }
}

pub fn expand(ast: &CellAst, c: &Compiled, plan: &Plan) -> TokenStream {
    let ir = &c.ir;
    let (name, grads) = type_names(ast);
    let vis = &ast.vis;
    let attrs = &ast.attrs;
    let syms = &ir.syms;
    let params: Vec<Ident> = ir
        .params
        .iter()
        .map(|p| format_ident!("{}", p.name, span = p.span))
        .collect();
    let param_types: Vec<TokenStream> = ir
        .params
        .iter()
        .map(|p| {
            if p.is_matrix {
                quote!(::rnn_runtime::nalgebra::DMatrix<T>)
            } else {
                quote!(::rnn_runtime::nalgebra::DVector<T>)
            }
        })
        .collect();
    let param_docs: Vec<String> = ir
        .params
        .iter()
        .zip(&c.shapes.params)
        .map(|(p, (rows, cols))| match cols {
            Some(cols) => format!(
                "`{}`: a matrix of ({}, {})",
                p.name,
                rows.display(syms),
                cols.display(syms)
            ),
            None => format!("`{}`: a vector of {}", p.name, rows.display(syms)),
        })
        .collect();
    let struct_doc = struct_doc(ir, &param_docs);
    let grads_doc = format!("The gradients of a [`{name}`]'s parameters, field for field.");
    let dims = dims_prelude(syms);
    let extra_sizes: Vec<Ident> = syms[2..]
        .iter()
        .map(|s| format_ident!("{}", s.to_lowercase()))
        .collect();
    let extra_docs = if extra_sizes.is_empty() {
        String::new()
    } else {
        format!(
            " and the sizes {}",
            syms[2..]
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let new_doc = format!(
        "Creates the cell for inputs of size `input_size` (I), states of size `hidden_size` (H){extra_docs}, every parameter drawn from U(-1/√H, 1/√H) as PyTorch initialises its recurrent layers."
    );
    let shapes_of: Vec<TokenStream> = c
        .shapes
        .params
        .iter()
        .map(|(rows, cols)| {
            let rows = rows.tokens(syms);
            let cols = cols.as_ref().map_or(quote!(1usize), |c| c.tokens(syms));
            quote!((#rows, #cols))
        })
        .collect();
    let alloc: Vec<TokenStream> = ir
        .params
        .iter()
        .zip(&shapes_of)
        .map(|(p, shape)| {
            let ty = if p.is_matrix { quote!(DMatrix) } else { quote!(DVector) };
            let ctor = if p.is_matrix { quote!(from_fn(__rows, __cols, |_, _| __init.draw(__rng))) } else { quote!(from_fn(__rows, |_, _| __init.draw(__rng))) };
            quote!({ let (__rows, __cols) = #shape; let _ = __cols; ::rnn_runtime::nalgebra::#ty::#ctor })
        })
        .collect();
    let zeros: Vec<TokenStream> = ir
        .params
        .iter()
        .zip(&shapes_of)
        .map(|(p, shape)| {
            let ty = if p.is_matrix { quote!(DMatrix) } else { quote!(DVector) };
            let ctor = if p.is_matrix { quote!(zeros(__rows, __cols)) } else { quote!(zeros(__rows)) };
            quote!({ let (__rows, __cols) = #shape; let _ = __cols; ::rnn_runtime::nalgebra::#ty::#ctor })
        })
        .collect();
    let spec = spec(ast, c, plan, &name);
    let buffers = plan.buffers.iter().map(|b| {
        let rows = b.rows.tokens(syms);
        let cols = match &b.cols {
            Cols::Steps => quote!(::rnn_runtime::BufferCols::Steps),
            Cols::Batch => quote!(::rnn_runtime::BufferCols::Batch),
            Cols::Fixed(cols) => {
                let cols = cols.tokens(syms);
                quote!(::rnn_runtime::BufferCols::Fixed(#cols))
            }
        };
        let what = &b.what;
        quote!(::rnn_runtime::BufferSpec { rows: #rows, cols: #cols, what: #what })
    });
    // Each stack from its blocks in one call, so that the runtime can pack them
    // straight from the parameters (`Tape::load_stack`).
    let stacking = plan.stacks.iter().enumerate().map(|(k, stack)| {
        let buf = stack.buf;
        let blocks = stack_blocks(c, plan, k, &params);
        quote!(__tape.load_stack(#buf, &#blocks);)
    });
    let prepare = program(c, plan, Program::Prepare, &params);
    let step_forward = program(c, plan, Program::StepForward, &params);
    let step_backward = program(c, plan, Program::StepBackward, &params);
    let finish = program(c, plan, Program::Finish, &params);
    let weight_grads = plan.weight_grads.iter().map(|w| {
        let blocks = w.blocks.iter().map(|block| {
            let field = &params[block.param];
            let grad_rows = c.shapes.params[block.param].0.tokens(syms);
            let col_start = block.col_start.tokens(syms);
            let rows = block.rows.tokens(syms);
            quote!(::rnn_runtime::GradBlock {
                grad: __grads.#field.as_mut_slice(),
                grad_rows: #grad_rows,
                col_start: #col_start,
                rows: #rows,
            })
        });
        let sums = w.sums.iter().map(|sum| {
            let field = &params[sum.param];
            let row = sum.row.tokens(syms);
            quote!(::rnn_runtime::GradSum { grad: __grads.#field.as_mut_slice(), row: #row })
        });
        let cols = w.cols.tokens(syms);
        let (dz_buf, dz_row) = (w.dz.buf, w.dz.row.tokens(syms));
        let (v_buf, v_row) = (w.v.buf, w.v.row.tokens(syms));
        quote!(__tape.weight_grads((#dz_buf, #dz_row), (#v_buf, #v_row), #cols, &mut [#(#blocks),*], &mut [#(#sums),*]);)
    });
    let names: Vec<String> = ir.params.iter().map(|p| p.name.clone()).collect();
    let shape_locals: Vec<Ident> = (0..names.len())
        .map(|i| format_ident!("__shape{}", i))
        .collect();
    let n_syms = syms.len();

    quote! {
        #(#attrs)*
        #[doc = #struct_doc]
        #[allow(non_snake_case)]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #name<T = f32> {
            #(#[doc = #param_docs] pub #params: #param_types,)*
            __dims: [usize; #n_syms],
        }

        #[doc = #grads_doc]
        #[allow(non_snake_case)]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #grads<T = f32> {
            #(#[doc = #param_docs] pub #params: #param_types,)*
        }

        impl<T: ::rnn_runtime::Scalar> #name<T> {
            #[doc = #new_doc]
            pub fn new(input_size: usize, hidden_size: usize, #(#extra_sizes: usize,)* rng: &mut ::rnn_runtime::Rng) -> Self {
                let __dims = [input_size, hidden_size, #(#extra_sizes),*];
                let __init = ::rnn_runtime::Init::pytorch_default(hidden_size);
                Self::with_init(__dims, &__init, rng)
            }

            /// Creates the cell with the given sizes (in the order of
            /// [`CellSpec::size_symbols`](::rnn_runtime::CellSpec)) and initialisation.
            pub fn with_init(dims: [usize; #n_syms], init: &::rnn_runtime::Init, rng: &mut ::rnn_runtime::Rng) -> Self {
                let (__init, __rng) = (init, rng);
                let __dims = dims;
                #dims
                Self { #(#params: #alloc,)* __dims }
            }
        }

        const _: () = {
            impl<T: ::rnn_runtime::Scalar> ::rnn_runtime::Parameters<T> for #name<T> {
                fn parameters(&self) -> ::std::vec::Vec<::rnn_runtime::ParamRef<'_, T>> {
                    vec![#(::rnn_runtime::ParamRef::new(#names, self.#params.as_slice(), self.#params.shape()),)*]
                }
                fn parameters_mut(&mut self) -> ::std::vec::Vec<::rnn_runtime::ParamMut<'_, T>> {
                    #(let #shape_locals = self.#params.shape();)*
                    vec![#(::rnn_runtime::ParamMut::new(#names, self.#params.as_mut_slice(), #shape_locals),)*]
                }
            }

            impl<T: ::rnn_runtime::Scalar> ::rnn_runtime::Parameters<T> for #grads<T> {
                fn parameters(&self) -> ::std::vec::Vec<::rnn_runtime::ParamRef<'_, T>> {
                    vec![#(::rnn_runtime::ParamRef::new(#names, self.#params.as_slice(), self.#params.shape()),)*]
                }
                fn parameters_mut(&mut self) -> ::std::vec::Vec<::rnn_runtime::ParamMut<'_, T>> {
                    #(let #shape_locals = self.#params.shape();)*
                    vec![#(::rnn_runtime::ParamMut::new(#names, self.#params.as_mut_slice(), #shape_locals),)*]
                }
            }

            #[allow(unused_variables, unused_mut, clippy::all)]
            impl<T: ::rnn_runtime::Scalar> ::rnn_runtime::Cell<T> for #name<T> {
                type Grads = #grads<T>;

                const SPEC: &'static ::rnn_runtime::CellSpec = &#spec;

                fn dims(&self) -> &[usize] {
                    &self.__dims
                }

                fn with_dims(dims: &[usize], init: &::rnn_runtime::Init, rng: &mut ::rnn_runtime::Rng) -> ::core::result::Result<Self, ::rnn_runtime::Error> {
                    let dims: [usize; #n_syms] = dims.try_into().map_err(|_| ::rnn_runtime::Error::new(format!(
                        "`{}` has {} sizes ({}) but {} were given", stringify!(#name), #n_syms,
                        <Self as ::rnn_runtime::Cell<T>>::SPEC.size_symbols.join(", "), dims.len())))?;
                    Ok(Self::with_init(dims, init, rng))
                }

                fn zero_grads(&self) -> #grads<T> {
                    let __dims = self.__dims;
                    #dims
                    #grads { #(#params: #zeros,)* }
                }

                fn tape_buffers(&self) -> ::std::vec::Vec<::rnn_runtime::BufferSpec> {
                    let __dims = self.__dims;
                    #dims
                    vec![#(#buffers),*]
                }

                fn prepare(&self, __tape: &mut ::rnn_runtime::Tape<T>) {
                    let __dims = self.__dims;
                    #dims
                    #(#stacking)*
                    let (__off, __n) = (0usize, __tape.columns());
                    #prepare
                }

                fn step_forward(&self, __tape: &mut ::rnn_runtime::Tape<T>, __off: usize, __n: usize) {
                    let __dims = self.__dims;
                    #dims
                    #step_forward
                }

                fn step_backward(&self, __tape: &mut ::rnn_runtime::Tape<T>, __off: usize, __n: usize, __grads: &mut #grads<T>) {
                    let __dims = self.__dims;
                    #dims
                    #step_backward
                }

                fn finish_backward(&self, __tape: &mut ::rnn_runtime::Tape<T>, __grads: &mut #grads<T>) {
                    let __dims = self.__dims;
                    #dims
                    let (__off, __n) = (0usize, __tape.columns());
                    #finish
                    #(#weight_grads)*
                }
            }
        };
    }
}

/// Stack `stack`'s blocks, an array of `StackBlock`s over the cell's parameters (`self`),
/// each block's rows after the one before.
fn stack_blocks(c: &Compiled, plan: &Plan, stack: usize, params: &[Ident]) -> TokenStream {
    let syms = &c.ir.syms;
    let mut row = Size::zero();
    let blocks = plan.stacks[stack].blocks.iter().map(|block| {
        let field = &params[block.mat];
        let rows = &c.shapes.params[block.mat].0;
        let col_start = block
            .cols
            .as_ref()
            .map_or(Size::zero(), |(s, _)| s.clone())
            .tokens(syms);
        let row_tokens = row.tokens(syms);
        let param_rows = rows.tokens(syms);
        row = row.plus(rows);
        quote!(::rnn_runtime::StackBlock {
            row: #row_tokens,
            values: self.#field.as_slice(),
            rows: #param_rows,
            col_start: #col_start,
        })
    });
    quote!([#(#blocks),*])
}

fn dims_prelude(syms: &[String]) -> TokenStream {
    let locals = syms.iter().enumerate().map(|(i, s)| {
        let local = format_ident!("__dim_{}", s);
        quote!(let #local: usize = __dims[#i];)
    });
    quote!(#(#locals)*)
}

fn struct_doc(ir: &CellIr, param_docs: &[String]) -> String {
    let mut doc = String::new();
    doc.push_str(
        "\n\nA recurrent cell declared with `#[recurrent]` from the equations\n\n```text\n",
    );
    for eq in &ir.equations {
        doc.push_str(eq);
        doc.push('\n');
    }
    doc.push_str("```\n\n");
    let vars = |vars: &[crate::ir::Var]| {
        vars.iter()
            .map(|v| format!("`{}` ({})", v.name, ir.syms[v.sym]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    doc.push_str(&format!(
        "Inputs: {}. States: {}; the output is `{}`.\n\n",
        vars(&ir.inputs),
        vars(&ir.states),
        ir.states[ir.output].name
    ));
    doc.push_str("Parameters:\n");
    for p in param_docs {
        doc.push_str(&format!("- {p}\n"));
    }
    doc
}

fn spec(ast: &CellAst, c: &Compiled, plan: &Plan, name: &Ident) -> TokenStream {
    let ir = &c.ir;
    let name = name.to_string();
    let syms = &ir.syms;
    let var = |v: &crate::ir::Var| {
        let (n, sym) = (&v.name, v.sym);
        quote!(::rnn_runtime::VarSpec { name: #n, size: #sym })
    };
    let inputs = ir.inputs.iter().map(var);
    let states = ir.states.iter().map(var);
    let size_spec = |s: &Size| {
        let terms = s.terms().map(|(sym, coef)| quote!((#sym, #coef)));
        quote!(::rnn_runtime::SizeSpec(&[#(#terms),*]))
    };
    let params = ir
        .params
        .iter()
        .zip(&c.shapes.params)
        .map(|(p, (rows, cols))| {
            let n = &p.name;
            let rows = size_spec(rows);
            let cols = match cols {
                Some(cols) => {
                    let cols = size_spec(cols);
                    quote!(::core::option::Option::Some(#cols))
                }
                None => quote!(::core::option::Option::None),
            };
            quote!(::rnn_runtime::ParamSpec { name: #n, rows: #rows, cols: #cols })
        });
    let output = ir.output;
    let equations = &ir.equations;
    let roles = &plan.roles;
    let (inp, d_inp, prev, state, d_state, d_prev) = (
        &roles.inputs,
        &roles.d_inputs,
        &roles.prev,
        &roles.state,
        &roles.d_state,
        &roles.d_prev,
    );
    let _ = ast;
    quote! {
        ::rnn_runtime::CellSpec {
            name: #name,
            size_symbols: &[#(#syms),*],
            inputs: &[#(#inputs),*],
            states: &[#(#states),*],
            output: #output,
            params: &[#(#params),*],
            equations: &[#(#equations),*],
            roles: ::rnn_runtime::TapeRoles {
                inputs: &[#(#inp),*],
                d_inputs: &[#(#d_inp),*],
                prev: &[#(#prev),*],
                state: &[#(#state),*],
                d_state: &[#(#d_state),*],
                d_prev: &[#(#d_prev),*],
            },
        }
    }
}

/// The stages of one program, in order.
fn program(c: &Compiled, plan: &Plan, which: Program, params: &[Ident]) -> TokenStream {
    let stages = match which {
        Program::Prepare => &plan.prepare,
        Program::StepForward => &plan.step_forward,
        Program::StepBackward => &plan.step_backward,
        Program::Finish => &plan.finish,
    };
    let syms = &c.ir.syms;
    let loc = |l: &Loc| {
        let buf = l.buf;
        let row = l.row.tokens(syms);
        let col0 = col0(plan, l.buf, which);
        quote!((#buf, #row, #col0))
    };
    let code = stages.iter().map(|stage| match stage {
        Stage::Gemm {
            stack,
            transpose,
            src,
            dst,
            accumulate,
            biases,
        } => {
            let stack_buf = plan.stacks[*stack].buf;
            // The stack's blocks, which a pass of few columns reads in place
            // (`Tape::gemm`); a closure, so that other passes build none.
            let blocks = stack_blocks(c, plan, *stack, params);
            let blocks = quote!(|| #blocks);
            let (src, dst) = (loc(src), loc(dst));
            if !biases.is_empty() {
                let biases = biases.iter().map(|b| {
                    let row = b.row.tokens(syms);
                    let fields = b.params.iter().map(|p| &params[*p]);
                    quote!((#row, &[#(self.#fields.as_slice()),*][..]))
                });
                quote!(__tape.gemm_onto(#stack_buf, #blocks, #src, #dst, __n, &[#(#biases),*]);)
            } else {
                quote!(__tape.gemm(#stack_buf, #blocks, #transpose, #src, #dst, __n, #accumulate);)
            }
        }
        Stage::Copy { src, dst, rows } => {
            let (src, dst, rows) = (loc(src), loc(dst), rows.tokens(syms));
            quote!(__tape.copy(#src, #dst, #rows, __n);)
        }
        Stage::Zero { dst, rows } => {
            let (dst, rows) = (loc(dst), rows.tokens(syms));
            quote!(__tape.zero(#dst, #rows, __n);)
        }
        Stage::Broadcast { param, dst } => {
            let (field, dst) = (&params[*param], loc(dst));
            quote!(__tape.broadcast(#dst, self.#field.as_slice(), __n);)
        }
        Stage::Kernel(kernel) => fused_loop(c, plan, which, kernel, params),
    });
    let input_only = match which {
        Program::Finish => crate::input_only::finish_input_only(plan),
        _ => vec![false; stages.len()],
    };
    let code = code.enumerate().map(|(k, stage)| {
        if input_only[k] {
            quote!(if __tape.input_grads() { #stage })
        } else {
            stage
        }
    });
    quote!(#(#code)*)
}

/// The first column a program addresses in a buffer: the step's offset for buffers
/// that hold every step, 0 for those that hold the current step only.
fn col0(plan: &Plan, buf: usize, which: Program) -> TokenStream {
    match plan.buffers[buf].cols {
        Cols::Steps if which.is_step() => quote!(__off),
        _ => quote!(0usize),
    }
}

/// One kernel as a loop over columns and rows, with every value a local.
fn fused_loop(
    c: &Compiled,
    plan: &Plan,
    which: Program,
    kernel: &Kernel,
    params: &[Ident],
) -> TokenStream {
    let syms = &c.ir.syms;
    let mut bufs: Vec<usize> = Vec::new();
    let mut vec_params: Vec<usize> = Vec::new();
    let mut grad_params: Vec<usize> = Vec::new();
    let mut note = |operand: &Operand, bufs: &mut Vec<usize>| match operand {
        Operand::Load(l) if !bufs.contains(&l.buf) => bufs.push(l.buf),
        Operand::Param(p) if !vec_params.contains(p) => vec_params.push(*p),
        _ => {}
    };
    for stmt in &kernel.body {
        for operand in stmt.operands() {
            note(operand, &mut bufs);
        }
        match stmt {
            KStmt::Store { dst, .. } if !bufs.contains(&dst.buf) => bufs.push(dst.buf),
            KStmt::Accumulate { param, .. } if !grad_params.contains(param) => {
                grad_params.push(*param)
            }
            _ => {}
        }
    }
    // Every access is to a block of `rows` values of one column of one buffer, at a
    // row offset. Each distinct block becomes a slice of exactly `rows` values before
    // the loop over rows, so that indexing by the loop counter needs no bounds check
    // and the loop vectorises; blocks of a buffer that is written are split from it
    // disjointly.
    let mut blocks: Blocks = Vec::new();
    let mut stored: Vec<usize> = Vec::new();
    let mut body = Vec::new();
    for stmt in &kernel.body {
        body.push(match stmt {
            KStmt::Let { id, op } => {
                let local = format_ident!("__v{}", id);
                let expr = match op {
                    KOp::Call(f, a) => call(*f, false, operand(&mut blocks, syms, a)),
                    KOp::Deriv(f, a) => call(*f, true, operand(&mut blocks, syms, a)),
                    KOp::Neg(a) => {
                        let a = operand(&mut blocks, syms, a);
                        quote!(-#a)
                    }
                    KOp::Bin(op, a, b) => {
                        let (a, b) = (operand(&mut blocks, syms, a), operand(&mut blocks, syms, b));
                        match op {
                            BinOp::Add => quote!(#a + #b),
                            BinOp::Sub => quote!(#a - #b),
                            BinOp::Mul => quote!(#a * #b),
                        }
                    }
                };
                quote!(let #local: T = #expr;)
            }
            KStmt::Store { value: v, dst } => {
                let v = operand(&mut blocks, syms, v);
                if !stored.contains(&dst.buf) {
                    stored.push(dst.buf);
                }
                let block = block(&mut blocks, syms, dst.buf, &dst.row);
                quote!(#block[__j] = #v;)
            }
            KStmt::Accumulate { param, value: v } => {
                let local = format_ident!("__grad{}", param);
                let v = operand(&mut blocks, syms, v);
                quote!(#local[__j] += #v;)
            }
        });
    }
    let buf_vars: Vec<Ident> = bufs.iter().map(|b| format_ident!("__buf{}", b)).collect();
    let column_blocks = bufs.iter().map(|&b| {
        let (buf, col) = (format_ident!("__buf{}", b), format_ident!("__col{}", b));
        let ld = plan.buffers[b].rows.tokens(syms);
        let col0 = col0(plan, b, which);
        let mine: Vec<(Ident, &TokenStream)> = blocks
            .iter()
            .enumerate()
            .filter(|(_, (owner, _, _))| *owner == b)
            .map(|(k, (_, _, row))| (format_ident!("__block{}", k), row))
            .collect();
        let names: Vec<&Ident> = mine.iter().map(|(name, _)| name).collect();
        let rows: Vec<&TokenStream> = mine.iter().map(|(_, row)| *row).collect();
        let split = if !stored.contains(&b) {
            quote!(#(let #names = &#buf[#col + #rows..][..__rows];)*)
        } else if mine.len() == 1 {
            quote!(#(let #names = &mut #buf[#col + #rows..][..__rows];)*)
        } else {
            quote! {
                let [#(#names),*] = #buf[#col..]
                    .get_disjoint_mut([#(#rows..#rows + __rows),*])
                    .expect("the blocks of a buffer are disjoint");
                #(let #names = &mut #names[..__rows];)*
            }
        };
        quote! {
            let #col = (#col0 + __c) * #ld;
            #split
        }
    });
    let param_bindings = vec_params.iter().map(|p| {
        let (local, field) = (format_ident!("__param{}", p), &params[*p]);
        quote!(let #local = &self.#field.as_slice()[..__rows];)
    });
    let grad_bindings = grad_params.iter().map(|p| {
        let (local, field) = (format_ident!("__grad{}", p), &params[*p]);
        quote!(let #local = &mut __grads.#field.as_mut_slice()[..__rows];)
    });
    // The loop over rows is a function of its slices, called once per column and never
    // inlined: Rust tells LLVM that slice arguments do not alias, so the loop
    // vectorises. Written in place (or inlined), with a dozen slices, LLVM needed a
    // runtime alias check per pair of them, gave up, and ran the backward loops one
    // value at a time: `perf annotate` of the peephole LSTM showed scalar `vmulss`,
    // and the medium peephole's step backward took 5-6% of its time, now 2%.
    let block_args: Vec<Ident> = (0..blocks.len())
        .map(|k| format_ident!("__block{}", k))
        .collect();
    let mutability: Vec<TokenStream> = blocks
        .iter()
        .map(|(buf, ..)| {
            if stored.contains(buf) {
                quote!(mut)
            } else {
                quote!()
            }
        })
        .collect();
    let block_params = block_args
        .iter()
        .zip(&mutability)
        .map(|(name, m)| quote!(#name: &#m [T]));
    let vec_params_idents: Vec<Ident> = vec_params
        .iter()
        .map(|p| format_ident!("__param{}", p))
        .collect();
    let grad_idents: Vec<Ident> = grad_params
        .iter()
        .map(|p| format_ident!("__grad{}", p))
        .collect();
    let rows = kernel.rows.tokens(syms);
    // The rows go in windows of a constant length, each window's slices cut to it, so
    // that every operation of a window is one AVX-512 instruction (two of AVX2) or a
    // few. Left to LLVM, a loop over a count it does not know runs its last rows one by
    // one: for the notebooks' LSTM (35 rows), 3 scalar rows took 43% of the gate math
    // (`perf annotate`). The long window is 32 rows, two vectors a value: their two
    // chains of dependent operations run side by side, where windows of 16 ran one
    // chain after the other (a step of a tiny cell waits on its gate math, whose next
    // product needs the state it makes): the tiny cells' forward steps ran 3-5% faster
    // (session 22, `benches/README.md`). Where the body may run twice for a row, the
    // last rows short of a long window run as the smallest window (8, 16 or 32 rows)
    // that ends with them; elsewhere, in windows of 16 and 8, then one by one.
    // Each slice is cut to the window, so that indexing by the row carries no bounds
    // check.
    let window = |len: TokenStream| -> TokenStream {
        quote! {
            #(let #block_args = &#mutability #block_args[__at..][..#len];)*
            #(let #vec_params_idents = &#vec_params_idents[__at..][..#len];)*
            #(let #grad_idents = &mut #grad_idents[__at..][..#len];)*
            for __j in 0..#len {
                #(#body)*
            }
        }
    };
    let pair = window(quote!(__PAIR));
    let chunk = window(quote!(__CHUNK));
    let half = window(quote!(__HALF));
    let rest = window(quote!(__rows - __at));
    // The notebooks' 35 rows thus run as 32 + 8 (rows 27..35 again), not 32 + 32.
    let last_window_again = if kernel.rows_can_rerun() {
        quote! {
            let __left = __rows - __at;
            if __left < __PAIR {
                if __left <= __HALF && __rows >= __HALF {
                    __at = __rows - __HALF;
                } else if __left <= __CHUNK && __rows >= __CHUNK {
                    __at = __rows - __CHUNK;
                } else if __rows >= __PAIR {
                    __at = __rows - __PAIR;
                }
            }
        }
    } else {
        quote!()
    };
    quote! {
        {
            #[inline(never)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            fn __rows_of_a_column<T: ::rnn_runtime::Scalar>(
                __rows: usize,
                #(#block_params,)*
                #(#vec_params_idents: &[T],)*
                #(#grad_idents: &mut [T],)*
            ) {
                const __PAIR: usize = 32;
                const __CHUNK: usize = 16;
                const __HALF: usize = 8;
                // Every slice cut to `__rows` once here, so that LLVM knows the
                // windows below are in bounds and drops their checks.
                #(let #block_args = &#mutability #block_args[..__rows];)*
                #(let #vec_params_idents = &#vec_params_idents[..__rows];)*
                #(let #grad_idents = &mut #grad_idents[..__rows];)*
                let mut __at = 0;
                while __at < __rows {
                    #last_window_again
                    if __rows - __at >= __PAIR {
                        #pair
                        __at += __PAIR;
                    } else if __rows - __at >= __CHUNK {
                        #chunk
                        __at += __CHUNK;
                    } else if __rows - __at >= __HALF {
                        #half
                        __at += __HALF;
                    } else {
                        #rest
                        __at = __rows;
                    }
                }
            }
            let __rows: usize = #rows;
            #(#param_bindings)*
            #(#grad_bindings)*
            let [#(#buf_vars),*] = __tape.buffers_mut([#(#bufs),*]);
            for __c in 0..__n {
                #(#column_blocks)*
                __rows_of_a_column(
                    __rows,
                    #(#block_args,)*
                    #(#vec_params_idents,)*
                    #(&mut *#grad_idents,)*
                );
            }
        }
    }
}

/// The blocks a fused loop reads and writes: (buffer, row offset's text, row offset).
type Blocks = Vec<(usize, String, TokenStream)>;

/// The slice of the block at `row` of `buf`, numbered in order of first use.
fn block(blocks: &mut Blocks, syms: &[String], buf: usize, row: &Size) -> Ident {
    let tokens = row.tokens(syms);
    let key = tokens.to_string();
    let k = match blocks.iter().position(|(b, r, _)| *b == buf && *r == key) {
        Some(k) => k,
        None => {
            blocks.push((buf, key, tokens));
            blocks.len() - 1
        }
    };
    format_ident!("__block{}", k)
}

/// An operand's value at row `__j`.
fn operand(blocks: &mut Blocks, syms: &[String], operand: &Operand) -> TokenStream {
    match operand {
        Operand::Local(id) => {
            let local = format_ident!("__v{}", id);
            quote!(#local)
        }
        Operand::Load(l) => {
            let block = block(blocks, syms, l.buf, &l.row);
            quote!(#block[__j])
        }
        Operand::Param(p) => {
            let local = format_ident!("__param{}", p);
            quote!(#local[__j])
        }
        Operand::Lit(v) => {
            let lit = Literal::f64_suffixed(*v);
            quote!(<T as ::rnn_runtime::Scalar>::of(#lit))
        }
    }
}

fn call(f: Func, deriv: bool, arg: TokenStream) -> TokenStream {
    let (forward, derivative) = f.runtime_names();
    let name = format_ident!("{}", if deriv { derivative } else { forward });
    quote!(::rnn_runtime::math::#name(#arg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn names() {
        assert_eq!(camel_case("lstm_cell"), "LstmCell");
        assert_eq!(camel_case("rnn_tanh_cell"), "RnnTanhCell");
        assert_eq!(camel_case("mgu"), "Mgu");
    }

    #[test]
    fn generates_a_struct_with_the_equations_parameters_and_the_cell_impl() {
        let out = crate::compile::compile(
            quote!(),
            quote! {
                /// A GRU.
                pub fn gru_cell(x: Input, h: State) {
                    let r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr);
                    let z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz);
                    let n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn));
                    h = (1.0 - z) * n + z * h;
                }
            },
        );
        let file: syn::File = syn::parse2(out).expect("generated code parses");
        let structs: Vec<&syn::ItemStruct> = file
            .items
            .iter()
            .filter_map(|i| {
                if let syn::Item::Struct(s) = i {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            structs
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>(),
            vec!["GruCell", "GruCellGrads"]
        );
        let fields: Vec<String> = structs[0]
            .fields
            .iter()
            .filter_map(|f| f.ident.as_ref().map(|i| i.to_string()))
            .collect();
        for name in ["W_ir", "b_ir", "W_hr", "b_hr", "W_iz", "W_hn", "b_hn"] {
            assert!(
                fields.contains(&name.to_string()),
                "{name} missing from {fields:?}"
            );
        }
        let docs: String = structs[0]
            .attrs
            .iter()
            .filter_map(|a| match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert!(docs.contains(" A GRU."), "{docs}");
        assert!(
            docs.contains("n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn))"),
            "{docs}"
        );
        assert!(docs.contains("`W_hn`: a matrix of (H, H)"), "{docs}");
        let text = file
            .items
            .iter()
            .map(|i| quote!(#i).to_string())
            .collect::<String>();
        assert!(
            text.contains("Cell < T > for GruCell < T >"),
            "the Cell impl is generated"
        );
    }

    #[test]
    fn on_error_the_type_still_exists_next_to_the_errors() {
        let out = crate::compile::compile(
            quote!(),
            quote! {
                fn broken(x: Input, h: State) { h = sigmod(x); }
            },
        )
        .to_string();
        assert!(out.contains("struct Broken"), "{out}");
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("unknown function `sigmod`"), "{out}");
    }
}
