//! Checks a Julia binding's foreign calls against include/moth.h without a
//! Julia runtime: every `ccall`/`@ccall` names a function of the header,
//! passes as many arguments, and declares each argument and the return as
//! the Julia type its C type maps to; every `@cfunction` matches the C
//! callback type it says (in a comment) it implements; the Julia structs
//! that mirror C structs have the same field types; the Julia constants
//! equal the header's; every exported function is called somewhere in the
//! binding or listed in its `NOT_WRAPPED` with a reason; and every call
//! that hands C a pointer sits inside `GC.@preserve`.
//!
//! The type mapping (what the binding's README promises):
//! - `int32_t` (and every enumeration or `int32_t` typedef): `Int32`/`Cint`;
//!   `uint32_t`: `UInt32`/`Cuint`; `int64_t`: `Int64`/`Clonglong`;
//!   `uint64_t`: `UInt64`/`Culonglong`; `size_t`: `Csize_t`; `bool`: `Bool`;
//!   `double`: `Float64`/`Cdouble`; `float`: `Float32`/`Cfloat`; `uint8_t`:
//!   `UInt8`; `void` (return): `Cvoid`.
//! - `const char *` (argument, return, callback argument): `Cstring`, so that
//!   Julia refuses strings holding NUL; `char *` (a buffer C writes):
//!   `Ptr{UInt8}`.
//! - `T *` argument: `Ptr{J}` or `Ref{J}` with `J` the mapping of `T`; `T *`
//!   return, field, callback argument or pointee: `Ptr{J}` only; `void *`:
//!   `Ptr{Cvoid}`; a pointer to an opaque handle: `Ptr{moth_x}` with
//!   `mutable struct moth_x end` declared; a function pointer: `Ptr{Cvoid}`.
//! - a struct by value: the Julia `struct` of the same name, immutable,
//!   whose fields have the mapped types in order (arrays: `NTuple{N, J}`).

pub mod c_header;
pub mod julia_lexer;
pub mod julia_source;

use c_header::{CType, Header, Typedef};
use julia_source::{JType, Source};
use std::collections::{BTreeMap, BTreeSet};

/// What a check found.
#[derive(Default, Debug)]
pub struct Report {
    pub errors: Vec<String>,
    pub calls: usize,
    pub wrapped: BTreeSet<String>,
    pub not_wrapped: usize,
    pub structs: usize,
    pub constants: usize,
    pub cfunctions: usize,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Pos {
    Arg,
    Ret,
    Field,
    Pointee,
    CallbackArg,
}

impl std::fmt::Display for CType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CType::Void => write!(f, "void"),
            CType::Named(n) => write!(f, "{n}"),
            CType::Pointer { pointee, is_const } => {
                if matches!(**pointee, CType::Pointer { .. }) {
                    write!(f, "{pointee}*")
                } else {
                    write!(f, "{}{pointee} *", if *is_const { "const " } else { "" })
                }
            }
            CType::Array(e, n) => write!(f, "{e}[{n}]"),
        }
    }
}

fn primitive(c: &str) -> Option<&'static [&'static str]> {
    Some(match c {
        "int32_t" => &["Int32", "Cint"],
        "uint32_t" => &["UInt32", "Cuint"],
        "int64_t" => &["Int64", "Clonglong"],
        "uint64_t" => &["UInt64", "Culonglong"],
        "int16_t" => &["Int16", "Cshort"],
        "uint16_t" => &["UInt16", "Cushort"],
        "int8_t" => &["Int8"],
        "uint8_t" => &["UInt8"],
        "size_t" => &["Csize_t"],
        "bool" => &["Bool"],
        "double" => &["Float64", "Cdouble"],
        "float" => &["Float32", "Cfloat"],
        _ => return None,
    })
}

fn plain(j: &JType, names: &[&str]) -> bool {
    j.params.is_empty() && names.contains(&j.name.as_str())
}

fn ptr_of(j: &JType, wrappers: &[&str], inner: &str) -> bool {
    wrappers.contains(&j.name.as_str()) && j.params.len() == 1 && plain(&j.params[0], &[inner])
}

struct Checker<'a> {
    h: &'a Header,
    src: &'a Source,
    errors: Vec<String>,
    structs_done: BTreeSet<String>,
}

impl Checker<'_> {
    /// Whether Julia type `j` is what C type `c` maps to at `pos`; the error
    /// says what was expected.
    fn matches(&mut self, c: &CType, j: &JType, pos: Pos) -> Result<(), String> {
        let c = self.h.resolve(c);
        match &c {
            CType::Void => {
                let ok = match pos {
                    Pos::Ret => plain(j, &["Cvoid", "Nothing"]),
                    Pos::Pointee => plain(j, &["Cvoid"]),
                    _ => false,
                };
                ok.then_some(()).ok_or_else(|| "Cvoid".to_string())
            }
            CType::Named(n) => {
                if let Some(names) = primitive(n) {
                    return plain(j, names)
                        .then_some(())
                        .ok_or_else(|| names.join(" or "));
                }
                match self.h.typedefs.get(n) {
                    Some(Typedef::Struct(_)) => {
                        if plain(j, &[n]) {
                            self.check_struct(n);
                            Ok(())
                        } else {
                            Err(format!("{n} (the Julia struct mirroring it)"))
                        }
                    }
                    Some(Typedef::Opaque) if pos == Pos::Pointee => {
                        if !plain(j, &[n]) {
                            return Err(n.clone());
                        }
                        match self.src.structs.get(n) {
                            Some(s) if s.fields.is_empty() => Ok(()),
                            _ => Err(format!("{n} (declared as `mutable struct {n} end`)")),
                        }
                    }
                    Some(Typedef::Opaque) => Err(format!("a pointer: {n} is opaque")),
                    Some(Typedef::FnPtr { .. }) => ptr_of(j, &["Ptr"], "Cvoid")
                        .then_some(())
                        .ok_or_else(|| "Ptr{Cvoid} (a @cfunction pointer)".to_string()),
                    _ => Err(format!("nothing: `{n}` is no type this checker knows")),
                }
            }
            CType::Pointer { pointee, is_const } => {
                if self.h.resolve(pointee) == CType::Named("char".into()) {
                    let string = *is_const && matches!(pos, Pos::Arg | Pos::Ret | Pos::CallbackArg);
                    return if string {
                        plain(j, &["Cstring"])
                            .then_some(())
                            .ok_or_else(|| "Cstring".into())
                    } else {
                        ptr_of(j, &["Ptr"], "UInt8")
                            .then_some(())
                            .ok_or_else(|| "Ptr{UInt8}".into())
                    };
                }
                let wrappers: &[&str] = if pos == Pos::Arg {
                    &["Ptr", "Ref"]
                } else {
                    &["Ptr"]
                };
                if !wrappers.contains(&j.name.as_str()) || j.params.len() != 1 {
                    let inner = self
                        .matches(pointee, j.params.first().unwrap_or(j), Pos::Pointee)
                        .err()
                        .unwrap_or_else(|| "...".into());
                    return Err(wrappers
                        .iter()
                        .map(|w| format!("{w}{{{inner}}}"))
                        .collect::<Vec<_>>()
                        .join(" or "));
                }
                self.matches(pointee, &j.params[0], Pos::Pointee)
                    .map_err(|e| format!("{}{{{e}}}", j.name))
            }
            CType::Array(elem, n) => {
                let expected = || format!("NTuple{{{n}, ...}}");
                if j.name != "NTuple" || j.params.len() != 2 {
                    return Err(expected());
                }
                let len = &j.params[0].name;
                let value = len
                    .parse::<i64>()
                    .ok()
                    .or_else(|| self.src.consts.get(len).map(|c| c.0));
                if value != Some(*n as i64) {
                    return Err(expected());
                }
                self.matches(elem, &j.params[1], Pos::Field)
                    .map_err(|e| format!("NTuple{{{n}, {e}}}"))
            }
        }
    }

    fn check_struct(&mut self, name: &str) {
        if !self.structs_done.insert(name.to_string()) {
            return;
        }
        let Some(Typedef::Struct(fields)) = self.h.typedefs.get(name) else {
            return;
        };
        let Some(js) = self.src.structs.get(name) else {
            self.errors.push(format!(
                "struct {name}: no Julia `struct {name}` mirrors it"
            ));
            return;
        };
        let at = format!("{}:{}", js.file, js.line);
        if js.mutable {
            self.errors.push(format!(
                "{at}: struct {name} is passed by value, so it must be an immutable (isbits) `struct`, not `mutable struct`"
            ));
        }
        if js.fields.len() != fields.len() {
            self.errors.push(format!(
                "{at}: struct {name} has {} fields in C, {} in Julia",
                fields.len(),
                js.fields.len()
            ));
        }
        for (n, (cf, (jname, jt))) in fields.iter().zip(js.fields.iter()).enumerate() {
            let res = match jt {
                Ok(jt) => self
                    .matches(&cf.ty, jt, Pos::Field)
                    .map_err(|e| (jt.to_string(), e)),
                Err(e) => Err((e.clone(), "a readable type".into())),
            };
            if let Err((got, want)) = res {
                self.errors.push(format!(
                    "{at}: struct {name} field {} (`{}`, C `{}`): Julia `{jname}::{got}`, expected `{want}`",
                    n + 1,
                    cf.name,
                    cf.ty
                ));
            }
        }
    }
}

/// Checks the binding (`binding`: its files' paths and texts) and the
/// examples (`examples`: calls checked, but they do not count as wrappers)
/// against the header text.
pub fn check(header: &str, binding: &[(String, String)], examples: &[(String, String)]) -> Report {
    let h = c_header::parse(header);
    let mut src = Source::default();
    for (path, text) in binding {
        julia_source::scan(path, text, &mut src);
    }
    let binding_calls = src.calls.len();
    for (path, text) in examples {
        julia_source::scan(path, text, &mut src);
    }
    let mut ck = Checker {
        h: &h,
        src: &src,
        errors: Vec::new(),
        structs_done: BTreeSet::new(),
    };
    let mut report = Report {
        calls: src.calls.len(),
        ..Report::default()
    };
    for (idx, call) in src.calls.iter().enumerate() {
        let at = format!("{}:{}", call.file, call.line);
        if call.function.is_empty() {
            let why = call.ret.clone().err().unwrap_or_default();
            ck.errors.push(format!(
                "{at}: a foreign call the checker cannot read ({why})"
            ));
            continue;
        }
        let Some(f) = h.function(&call.function) else {
            ck.errors.push(format!(
                "{at}: `{}` is not a function of include/moth.h",
                call.function
            ));
            continue;
        };
        if idx < binding_calls {
            report.wrapped.insert(f.name.clone());
        }
        let name = &f.name;
        if call.args.len() != f.params.len() {
            ck.errors.push(format!(
                "{at}: {name} takes {} arguments in C, the Julia call declares {}",
                f.params.len(),
                call.args.len()
            ));
        }
        if call.values != call.args.len() {
            ck.errors.push(format!(
                "{at}: {name}: {} argument types but {} values",
                call.args.len(),
                call.values
            ));
        }
        match &call.ret {
            Ok(j) => {
                if let Err(want) = ck.matches(&f.ret, j, Pos::Ret) {
                    ck.errors.push(format!(
                        "{at}: {name} returns C `{}`: Julia `{j}`, expected `{want}`",
                        f.ret
                    ));
                }
            }
            Err(e) => ck.errors.push(format!("{at}: {name}: return type {e}")),
        }
        let mut takes_pointer = false;
        for (n, (p, (jt, value))) in f.params.iter().zip(call.args.iter()).enumerate() {
            let resolved = h.resolve(&p.ty);
            takes_pointer |= matches!(resolved, CType::Pointer { .. });
            match jt {
                Ok(j) => {
                    if let Err(want) = ck.matches(&p.ty, j, Pos::Arg) {
                        ck.errors.push(format!(
                            "{at}: {name} argument {} (`{}`, C `{}`): Julia `{j}`, expected `{want}`",
                            n + 1,
                            p.name,
                            p.ty
                        ));
                    }
                }
                Err(e) => ck
                    .errors
                    .push(format!("{at}: {name} argument {}: {e}", n + 1)),
            }
            // A value named like another parameter is most likely in the
            // wrong place (two `int64_t`s swapped pass the type check).
            if let Some(v) = value {
                if v != &p.name {
                    if let Some(other) = f.params.iter().position(|q| &q.name == v) {
                        ck.errors.push(format!(
                            "{at}: {name} argument {} is `{}` in C, but the Julia call passes `{v}`, the name of argument {} (argument order?)",
                            n + 1,
                            p.name,
                            other + 1
                        ));
                    }
                }
            }
        }
        if takes_pointer && !call.preserved {
            ck.errors.push(format!(
                "{at}: {name} takes a pointer, but the call is not inside `GC.@preserve`"
            ));
        }
    }
    for cf in &src.cfunctions {
        report.cfunctions += 1;
        let at = format!("{}:{}", cf.file, cf.line);
        let Some(which) = &cf.implements else {
            ck.errors.push(format!(
                "{at}: @cfunction without a comment naming the C callback type it implements (`# moth_..._fn`)"
            ));
            continue;
        };
        let Some(Typedef::FnPtr { ret, params }) = h.typedefs.get(which) else {
            ck.errors.push(format!(
                "{at}: `{which}` is not a callback type of include/moth.h"
            ));
            continue;
        };
        if params.len() != cf.args.len() {
            ck.errors.push(format!(
                "{at}: {which} takes {} arguments in C, the @cfunction declares {}",
                params.len(),
                cf.args.len()
            ));
        }
        match &cf.ret {
            Ok(j) => {
                if let Err(want) = ck.matches(ret, j, Pos::Ret) {
                    ck.errors.push(format!(
                        "{at}: {which} returns C `{ret}`: Julia `{j}`, expected `{want}`"
                    ));
                }
            }
            Err(e) => ck.errors.push(format!("{at}: {which}: return type {e}")),
        }
        for (n, (p, jt)) in params.iter().zip(cf.args.iter()).enumerate() {
            let res = match jt {
                Ok(j) => ck
                    .matches(&p.ty, j, Pos::CallbackArg)
                    .map_err(|w| (j.to_string(), w)),
                Err(e) => Err((e.clone(), "a readable type".into())),
            };
            if let Err((got, want)) = res {
                ck.errors.push(format!(
                    "{at}: {which} argument {} (`{}`, C `{}`): Julia `{got}`, expected `{want}`",
                    n + 1,
                    p.name,
                    p.ty
                ));
            }
        }
    }
    // Structs the calls did not reach are still checked when Julia mirrors
    // them under the C name.
    let mirrored: Vec<String> = h
        .typedefs
        .iter()
        .filter(|(n, t)| matches!(t, Typedef::Struct(_)) && src.structs.contains_key(*n))
        .map(|(n, _)| n.clone())
        .collect();
    for n in mirrored {
        ck.check_struct(&n);
    }
    report.structs = ck.structs_done.len();
    let mut errors = ck.errors;
    check_constants(&h, &src, &mut errors, &mut report);
    check_coverage(&h, &src, &mut errors, &mut report);
    report.errors = errors;
    report
}

fn check_constants(h: &Header, src: &Source, errors: &mut Vec<String>, report: &mut Report) {
    for (name, value) in &h.constants {
        match src.consts.get(name) {
            None => errors.push(format!(
                "{name} (= {value} in include/moth.h) has no Julia `const {name}`"
            )),
            Some((v, at)) if v != value => errors.push(format!(
                "{at}: const {name} = {v}, but include/moth.h says {value}"
            )),
            Some(_) => report.constants += 1,
        }
    }
    for (name, (_, at)) in &src.consts {
        if name.starts_with("MOTH_") && !h.constants.contains_key(name) {
            errors.push(format!("{at}: const {name} is not in include/moth.h"));
        }
    }
}

fn check_coverage(h: &Header, src: &Source, errors: &mut Vec<String>, report: &mut Report) {
    let listed: &BTreeMap<String, (String, String)> = &src.not_wrapped;
    for f in &h.functions {
        match (report.wrapped.contains(&f.name), listed.get(&f.name)) {
            (true, Some((_, at))) => errors.push(format!(
                "{at}: {} is listed in NOT_WRAPPED but the binding calls it",
                f.name
            )),
            (false, None) => errors.push(format!(
                "{} is exported by include/moth.h but has no Julia wrapper (wrap it, or list it in NOT_WRAPPED with the reason)",
                f.name
            )),
            (false, Some((reason, at))) if reason.trim().is_empty() => {
                errors.push(format!("{at}: {} is in NOT_WRAPPED without a reason", f.name))
            }
            (false, Some(_)) => report.not_wrapped += 1,
            (true, None) => {}
        }
    }
    for (name, (_, at)) in listed {
        if h.function(name).is_none() {
            errors.push(format!(
                "{at}: NOT_WRAPPED lists `{name}`, which is not in include/moth.h"
            ));
        }
    }
}
