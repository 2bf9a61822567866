//! Enough of a Julia lexer to find, in a binding's sources, every `ccall`
//! and `@ccall` (function name, argument and return types, the argument
//! expressions), every `@cfunction`, the `struct` definitions, the integer
//! `const`s, the `NOT_WRAPPED` list and the spans of `GC.@preserve`.
//! Strings (with `$(...)` interpolation), characters, symbols and nested
//! `#= =#` comments are lexed properly, so that code inside them is not
//! mistaken for calls.

pub use super::julia_lexer::{lex, Tok, Token};

/// A Julia type expression: `Name` or `Name{Param, ...}` (an integer
/// parameter is a `Name` made of digits).
#[derive(Clone, Debug, PartialEq)]
pub struct JType {
    pub name: String,
    pub params: Vec<JType>,
}

impl std::fmt::Display for JType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.params.is_empty() {
            let inner: Vec<String> = self.params.iter().map(|p| p.to_string()).collect();
            write!(f, "{{{}}}", inner.join(", "))?;
        }
        Ok(())
    }
}

/// One `ccall` or `@ccall`.
#[derive(Clone, Debug)]
pub struct Call {
    pub file: String,
    pub line: usize,
    pub function: String,
    pub ret: Result<JType, String>,
    /// Each argument: its type, and the last name of its value expression
    /// when that is a plain name, a field (`spec.h`), or one conversion of
    /// such (`Csize_t(n)`).
    pub args: Vec<(Result<JType, String>, Option<String>)>,
    /// The `ccall` form's count of argument values (equal to `args` for
    /// `@ccall`).
    pub values: usize,
    pub preserved: bool,
}

#[derive(Clone, Debug)]
pub struct CFunctionPtr {
    pub file: String,
    pub line: usize,
    /// The C callback typedef named in a comment on the same line.
    pub implements: Option<String>,
    pub ret: Result<JType, String>,
    pub args: Vec<Result<JType, String>>,
}

#[derive(Clone, Debug)]
pub struct JStruct {
    pub file: String,
    pub line: usize,
    pub mutable: bool,
    pub fields: Vec<(String, Result<JType, String>)>,
}

#[derive(Default, Debug)]
pub struct Source {
    pub calls: Vec<Call>,
    pub cfunctions: Vec<CFunctionPtr>,
    pub structs: std::collections::BTreeMap<String, JStruct>,
    /// `const NAME = value` with an integer value (optionally wrapped in
    /// one conversion, `Int32(-3)`): name -> (value, file:line).
    pub consts: std::collections::BTreeMap<String, (i64, String)>,
    /// `NOT_WRAPPED` entries: C function -> (reason, file:line).
    pub not_wrapped: std::collections::BTreeMap<String, (String, String)>,
}

const OPENERS: &[&str] = &[
    "begin", "function", "if", "for", "while", "let", "try", "quote", "do", "struct", "module",
    "macro",
];

fn is_punct(t: &Tok, p: &str) -> bool {
    matches!(t, Tok::Punct(q) if q == p)
}
fn is_ident(t: &Tok, p: &str) -> bool {
    matches!(t, Tok::Ident(q) if q == p)
}

/// Code tokens only (no comments).
fn code(tokens: &[Token]) -> Vec<Token> {
    tokens
        .iter()
        .filter(|t| !matches!(t.tok, Tok::Comment(_)))
        .cloned()
        .collect()
}

/// Index of the bracket closing the one at `open`.
fn matching(t: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, tok) in t.iter().enumerate().skip(open) {
        match &tok.tok {
            Tok::Punct(p) if "([{".contains(p.as_str()) && p.len() == 1 => depth += 1,
            Tok::Punct(p) if ")]}".contains(p.as_str()) && p.len() == 1 => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced bracket opened on line {}", t[open].line)
}

/// Index of the `end` closing the block opened at `open` (`begin`,
/// `struct`, ...). Inside brackets, `end`/`begin` index arrays, and `for`/
/// `if` belong to comprehensions.
fn block_end(t: &[Token], open: usize) -> usize {
    let mut blocks = 0i32;
    let mut k = open;
    while k < t.len() {
        match &t[k].tok {
            Tok::Punct(p) if p == "(" || p == "[" || p == "{" => {
                k = matching(t, k);
            }
            Tok::Ident(w) if w == "end" => {
                blocks -= 1;
                if blocks == 0 {
                    return k;
                }
            }
            Tok::Ident(w) if OPENERS.contains(&w.as_str()) => {
                // `x.begin` would be a field; not used in our sources.
                blocks += 1;
            }
            Tok::Ident(w)
                if (w == "abstract" || w == "primitive")
                    && k + 1 < t.len()
                    && is_ident(&t[k + 1].tok, "type") =>
            {
                blocks += 1;
                k += 1;
            }
            _ => {}
        }
        k += 1;
    }
    panic!("block opened on line {} has no `end`", t[open].line)
}

/// Splits `t[from..to]` at commas (and semicolons) outside brackets.
fn split_commas(t: &[Token], from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = from;
    let mut k = from;
    while k < to {
        match &t[k].tok {
            Tok::Punct(p) if p == "(" || p == "[" || p == "{" => k = matching(t, k),
            Tok::Punct(p) if p == "," || p == ";" => {
                out.push((start, k));
                start = k + 1;
            }
            _ => {}
        }
        k += 1;
    }
    if trim(t, start, to).0 < trim(t, start, to).1 {
        out.push((start, to));
    }
    out.into_iter()
        .map(|(a, b)| trim(t, a, b))
        .filter(|(a, b)| a < b)
        .collect()
}

/// Drops newlines at both ends.
fn trim(t: &[Token], mut a: usize, mut b: usize) -> (usize, usize) {
    while a < b && t[a].tok == Tok::Newline {
        a += 1;
    }
    while b > a && t[b - 1].tok == Tok::Newline {
        b -= 1;
    }
    (a, b)
}

fn text(t: &[Token], a: usize, b: usize) -> String {
    t[a..b]
        .iter()
        .filter(|x| x.tok != Tok::Newline)
        .map(|x| match &x.tok {
            Tok::Ident(s) | Tok::Num(s) | Tok::Punct(s) => s.clone(),
            Tok::Macro(s) => format!("@{s}"),
            Tok::Str(s) => format!("\"{s}\""),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join("")
}

/// Parses `t[a..b]` as one type expression.
pub fn parse_type(t: &[Token], a: usize, b: usize) -> Result<JType, String> {
    let (a, b) = trim(t, a, b);
    let (ty, end) = type_at(t, a, b).ok_or_else(|| format!("`{}`", text(t, a, b)))?;
    if end != b {
        return Err(format!("`{}` is not a plain type", text(t, a, b)));
    }
    Ok(ty)
}

fn type_at(t: &[Token], a: usize, b: usize) -> Option<(JType, usize)> {
    if a >= b {
        return None;
    }
    let mut name = match &t[a].tok {
        Tok::Ident(s) | Tok::Num(s) => s.clone(),
        _ => return None,
    };
    let mut k = a + 1;
    // A qualified name keeps its last part (`Base.Cstring`, `LibMoth.moth_tensor`).
    while k + 1 < b && is_punct(&t[k].tok, ".") {
        match &t[k + 1].tok {
            Tok::Ident(s) => name = s.clone(),
            _ => return None,
        }
        k += 2;
    }
    let mut params = Vec::new();
    if k < b && is_punct(&t[k].tok, "{") {
        let close = matching(t, k);
        for (pa, pb) in split_commas(t, k + 1, close) {
            let (p, end) = type_at(t, pa, pb)?;
            if end != pb {
                return None;
            }
            params.push(p);
        }
        k = close + 1;
    }
    Some((JType { name, params }, k))
}

/// The name a value expression passes: `x`, `a.b.x`, or a conversion
/// `T(x)` of those.
fn value_name(t: &[Token], a: usize, b: usize) -> Option<String> {
    let (a, b) = trim(t, a, b);
    let chain = |a: usize, b: usize| -> Option<String> {
        if a >= b || (b - a) % 2 == 0 {
            return None;
        }
        let mut last = None;
        for (n, tok) in t[a..b].iter().enumerate() {
            match (&tok.tok, n % 2) {
                (Tok::Ident(s), 0) => last = Some(s.clone()),
                (Tok::Punct(p), 1) if p == "." => {}
                _ => return None,
            }
        }
        last
    };
    if let Some(n) = chain(a, b) {
        return Some(n);
    }
    // A conversion (`Csize_t(n)`, `Int64(h)`) passes its argument; another
    // call (`length(shape)`) computes something else.
    let conversion =
        matches!(&t[a].tok, Tok::Ident(f) if f.starts_with(|c: char| c.is_ascii_uppercase()));
    if b - a >= 3 && conversion && is_punct(&t[a + 1].tok, "(") && matching(t, a + 1) == b - 1 {
        return chain(a + 2, b - 1);
    }
    None
}

/// Everything the checker needs from one file.
pub fn scan(file: &str, text_: &str, out: &mut Source) {
    let all = lex(text_);
    let t = code(&all);
    let preserved = preserve_spans(&t);
    let in_preserve = |k: usize| preserved.iter().any(|&(a, b)| a <= k && k <= b);
    let mut k = 0;
    while k < t.len() {
        match &t[k].tok {
            Tok::Macro(m) if m == "ccall" => {
                let call = macro_ccall(file, &t, k).unwrap_or_else(|| Call {
                    file: file.into(),
                    line: t[k].line,
                    function: String::new(),
                    ret: Err("an @ccall this checker cannot read".into()),
                    args: vec![],
                    values: 0,
                    preserved: false,
                });
                out.calls.push(Call {
                    preserved: in_preserve(k),
                    ..call
                });
            }
            Tok::Ident(w) if w == "ccall" && k + 1 < t.len() && is_punct(&t[k + 1].tok, "(") => {
                // `function ccall` / `:ccall` are not calls; nothing like that here.
                out.calls.push(Call {
                    preserved: in_preserve(k),
                    ..plain_ccall(file, &t, k)
                });
            }
            Tok::Macro(m) if m == "cfunction" => {
                out.cfunctions.push(cfunction(file, &all, &t, k));
            }
            Tok::Ident(w) if w == "struct" => {
                let mutable = k > 0 && is_ident(&t[k - 1].tok, "mutable");
                if let Some((name, s)) = structure(file, &t, k, mutable) {
                    out.structs.insert(name, s);
                }
            }
            Tok::Ident(w) if w == "const" => constant(file, &t, k, out),
            _ => {}
        }
        k += 1;
    }
}

fn preserve_spans(t: &[Token]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for k in 0..t.len() {
        let is_preserve = matches!(&t[k].tok, Tok::Macro(m) if m == "preserve")
            && k >= 2
            && is_punct(&t[k - 1].tok, ".")
            && is_ident(&t[k - 2].tok, "GC");
        if !is_preserve {
            continue;
        }
        // The names, then either `begin ... end` or one expression to the
        // end of the line (brackets may continue it).
        let mut j = k + 1;
        while j < t.len() && matches!(t[j].tok, Tok::Ident(ref w) if w != "begin") {
            j += 1;
        }
        if j < t.len() && is_ident(&t[j].tok, "begin") {
            spans.push((k, block_end(t, j)));
            continue;
        }
        let mut e = k + 1;
        while e < t.len() && t[e].tok != Tok::Newline {
            if let Tok::Punct(p) = &t[e].tok {
                if p == "(" || p == "[" || p == "{" {
                    e = matching(t, e);
                }
            }
            e += 1;
        }
        spans.push((k, e));
    }
    spans
}

fn macro_ccall(file: &str, t: &[Token], at: usize) -> Option<Call> {
    // `@ccall lib.name(args)::Ret`, `lib` possibly a call (`libmoth()`)
    // or a string; or `@ccall name(args)::Ret`.
    let mut k = at + 1;
    let name_at = loop {
        let next_is = |p: &str| t.get(k + 1).is_some_and(|x| is_punct(&x.tok, p));
        match t.get(k).map(|x| &x.tok) {
            Some(Tok::Ident(_)) if next_is("(") => {
                let close = matching(t, k + 1);
                if t.get(close + 1).is_some_and(|x| is_punct(&x.tok, ".")) {
                    k = close + 2;
                } else {
                    break k;
                }
            }
            Some(Tok::Ident(_)) | Some(Tok::Str(_)) if next_is(".") => k += 2,
            _ => return None,
        }
    };
    let Tok::Ident(function) = t[name_at].tok.clone() else {
        return None;
    };
    let open = name_at + 1;
    let close = matching(t, open);
    let mut args = Vec::new();
    for (a, b) in split_commas(t, open + 1, close) {
        // The type is after the last top-level `::`.
        let mut split = None;
        let mut j = a;
        while j < b {
            match &t[j].tok {
                Tok::Punct(p) if p == "(" || p == "[" || p == "{" => j = matching(t, j),
                Tok::Punct(p) if p == "::" => split = Some(j),
                _ => {}
            }
            j += 1;
        }
        match split {
            Some(s) => args.push((parse_type(t, s + 1, b), value_name(t, a, s))),
            None => args.push((Err(format!("`{}` has no `::Type`", text(t, a, b))), None)),
        }
    }
    let ret = if close + 2 < t.len() && is_punct(&t[close + 1].tok, "::") {
        type_at(t, close + 2, t.len())
            .map(|(ty, _)| ty)
            .ok_or_else(|| "an unreadable return type".to_string())
    } else {
        Ok(JType {
            name: "Cvoid".into(),
            params: vec![],
        })
    };
    let values = args.len();
    Some(Call {
        file: file.into(),
        line: t[at].line,
        function,
        ret,
        args,
        values,
        preserved: false,
    })
}

fn plain_ccall(file: &str, t: &[Token], at: usize) -> Call {
    let open = at + 1;
    let close = matching(t, open);
    let parts = split_commas(t, open + 1, close);
    let mut call = Call {
        file: file.into(),
        line: t[at].line,
        function: String::new(),
        ret: Err("missing".into()),
        args: vec![],
        values: 0,
        preserved: false,
    };
    if parts.len() < 3 {
        call.ret = Err("a ccall needs (name, lib), a return type and a type tuple".into());
        return call;
    }
    let (fa, fb) = parts[0];
    for j in fa..fb {
        if is_punct(&t[j].tok, ":") {
            if let Some(Tok::Ident(n)) = t.get(j + 1).map(|x| x.tok.clone()) {
                call.function = n;
                break;
            }
        }
        if let Tok::Str(s) = &t[j].tok {
            call.function = s.clone();
            break;
        }
    }
    call.ret = parse_type(t, parts[1].0, parts[1].1);
    let (ta, tb) = parts[2];
    let values: Vec<(usize, usize)> = parts[3..].to_vec();
    if is_punct(&t[ta].tok, "(") && matching(t, ta) == tb - 1 {
        for (n, (a, b)) in split_commas(t, ta + 1, tb - 1).into_iter().enumerate() {
            let name = values.get(n).and_then(|&(va, vb)| value_name(t, va, vb));
            call.args.push((parse_type(t, a, b), name));
        }
    } else {
        call.args.push((
            Err("the argument types are not a literal tuple".into()),
            None,
        ));
    }
    call.values = values.len();
    call
}

fn cfunction(file: &str, all: &[Token], t: &[Token], at: usize) -> CFunctionPtr {
    let mut f = CFunctionPtr {
        file: file.into(),
        line: t[at].line,
        implements: None,
        ret: Err("missing".into()),
        args: vec![],
    };
    if at + 1 >= t.len() || !is_punct(&t[at + 1].tok, "(") {
        f.ret = Err("write @cfunction(f, Ret, (Args...)) with parentheses".into());
        return f;
    }
    let close = matching(t, at + 1);
    let parts = split_commas(t, at + 2, close);
    if parts.len() != 3 {
        f.ret = Err("@cfunction needs a function, a return type and a type tuple".into());
        return f;
    }
    f.ret = parse_type(t, parts[1].0, parts[1].1);
    let (ta, tb) = parts[2];
    if is_punct(&t[ta].tok, "(") && matching(t, ta) == tb - 1 {
        for (a, b) in split_commas(t, ta + 1, tb - 1) {
            f.args.push(parse_type(t, a, b));
        }
    }
    let lines = t[at].line..=t[close].line;
    f.implements = all.iter().find_map(|x| match &x.tok {
        Tok::Comment(c) if lines.contains(&x.line) => c
            .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .find(|w| w.starts_with("moth_") && w.ends_with("_fn"))
            .map(str::to_string),
        _ => None,
    });
    f
}

fn structure(file: &str, t: &[Token], at: usize, mutable: bool) -> Option<(String, JStruct)> {
    let Tok::Ident(name) = t.get(at + 1)?.tok.clone() else {
        return None;
    };
    let end = block_end(t, at);
    let mut s = JStruct {
        file: file.into(),
        line: t[at].line,
        mutable,
        fields: vec![],
    };
    // Fields are the lines `name::Type` (or `@atomic name::Type`) at the
    // struct's own level; inner constructors and the like are skipped.
    let mut k = at + 2;
    while k < end {
        let line_end = (k..end).find(|&j| t[j].tok == Tok::Newline).unwrap_or(end);
        let mut a = k;
        if matches!(&t[a].tok, Tok::Macro(m) if m == "atomic") {
            a += 1;
        }
        match &t[a].tok {
            Tok::Ident(w) if OPENERS.contains(&w.as_str()) => {
                k = block_end(t, a) + 1;
                continue;
            }
            Tok::Ident(field) if a + 1 < line_end && is_punct(&t[a + 1].tok, "::") => {
                s.fields
                    .push((field.clone(), parse_type(t, a + 2, line_end)));
            }
            _ => {}
        }
        k = line_end + 1;
    }
    Some((name, s))
}

fn constant(file: &str, t: &[Token], at: usize, out: &mut Source) {
    let Some(Tok::Ident(name)) = t.get(at + 1).map(|x| x.tok.clone()) else {
        return;
    };
    if !t.get(at + 2).is_some_and(|x| is_punct(&x.tok, "=")) {
        return;
    }
    let line_end = (at..t.len())
        .find(|&j| t[j].tok == Tok::Newline)
        .unwrap_or(t.len());
    let where_ = format!("{file}:{}", t[at].line);
    if name == "NOT_WRAPPED" {
        let Some(open) = (at..line_end).find(|&j| is_punct(&t[j].tok, "(")) else {
            return;
        };
        let close = matching(t, open);
        for (a, b) in split_commas(t, open + 1, close) {
            let entry = &t[a..b];
            let ok =
                entry.len() == 4 && is_punct(&entry[0].tok, ":") && is_punct(&entry[2].tok, "=>");
            match (
                ok,
                entry.get(1).map(|x| &x.tok),
                entry.get(3).map(|x| &x.tok),
            ) {
                (true, Some(Tok::Ident(f)), Some(Tok::Str(reason))) => {
                    let at = format!("{file}:{}", entry[0].line);
                    out.not_wrapped.insert(f.clone(), (reason.clone(), at));
                }
                _ => {
                    out.not_wrapped.insert(
                        format!("<unreadable entry `{}`>", text(t, a, b)),
                        (String::new(), format!("{file}:{}", t[a].line)),
                    );
                }
            }
        }
        return;
    }
    let (mut a, mut b) = trim(t, at + 3, line_end);
    // One conversion around the literal: `Int32(-3)`.
    if b - a >= 3
        && matches!(t[a].tok, Tok::Ident(_))
        && is_punct(&t[a + 1].tok, "(")
        && matching(t, a + 1) == b - 1
    {
        a += 2;
        b -= 1;
    }
    let lit = text(t, a, b);
    let v = lit
        .strip_prefix('-')
        .map(|r| r.parse::<i64>().map(|v| -v))
        .unwrap_or_else(|| lit.parse::<i64>());
    if let Ok(v) = v {
        out.consts.insert(name, (v, where_));
    }
}
