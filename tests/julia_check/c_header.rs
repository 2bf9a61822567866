//! A parser for include/moth.h as cbindgen writes it: function
//! declarations, typedefs (aliases, opaque and plain structs, function
//! pointers), enumerations and integer `#define`s. It evaluates the
//! preprocessor conditions the way a C99 compiler sees them (the header is
//! compiled as C99 by the C tests), and refuses what it does not know
//! instead of guessing, so that a change of cbindgen's output is noticed.

use std::collections::BTreeMap;

/// A C type as written in a declaration.
#[derive(Clone, Debug, PartialEq)]
pub enum CType {
    Void,
    /// A builtin (`int32_t`, `bool`, `char`, ...) or a typedef name.
    Named(String),
    Pointer {
        pointee: Box<CType>,
        is_const: bool,
    },
    /// A fixed-size array (struct fields only); the length is resolved.
    Array(Box<CType>, usize),
}

/// A parameter or struct field.
#[derive(Clone, Debug)]
pub struct CParam {
    pub name: String,
    pub ty: CType,
}

#[derive(Clone, Debug)]
pub struct CFunction {
    pub name: String,
    pub ret: CType,
    pub params: Vec<CParam>,
}

#[derive(Clone, Debug)]
pub enum Typedef {
    Alias(CType),
    Opaque,
    Struct(Vec<CParam>),
    FnPtr {
        ret: CType,
        params: Vec<CParam>,
    },
    /// An enumeration's name (its values are `int32_t`).
    Enum,
}

#[derive(Default, Debug)]
pub struct Header {
    /// In declaration order.
    pub functions: Vec<CFunction>,
    pub typedefs: BTreeMap<String, Typedef>,
    /// Enumerators and integer `#define`s.
    pub constants: BTreeMap<String, i64>,
}

impl Header {
    pub fn function(&self, name: &str) -> Option<&CFunction> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Follows typedef aliases (enumerations become `int32_t`).
    pub fn resolve(&self, ty: &CType) -> CType {
        let mut ty = ty.clone();
        for _ in 0..16 {
            match &ty {
                CType::Named(n) => match self.typedefs.get(n) {
                    Some(Typedef::Alias(t)) => ty = t.clone(),
                    Some(Typedef::Enum) => return CType::Named("int32_t".into()),
                    _ => return ty,
                },
                _ => return ty,
            }
        }
        panic!("typedef cycle at {ty:?}")
    }
}

/// Parses the header text; panics (the test fails) on anything it does not
/// understand.
pub fn parse(text: &str) -> Header {
    let mut header = Header::default();
    let code = preprocess(&strip_comments(text), &mut header.constants);
    let tokens = tokenize(&code);
    let mut p = Parser {
        t: tokens,
        i: 0,
        h: header,
    };
    while p.i < p.t.len() {
        p.declaration();
    }
    p.h
}

fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").expect("unterminated comment") + i + 4;
            // Keep line breaks so that preprocessor lines stay lines.
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            out.push(' ');
            i = end;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The macros a C99 compiler defines that the header tests.
fn predefined() -> BTreeMap<String, i64> {
    [("__STDC_VERSION__", 199901), ("__GNUC__", 12)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches(['L', 'l', 'U', 'u']);
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r.trim()),
        None => (false, s),
    };
    let v = if let Some(hex) = s.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else {
        s.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

/// `defined(X)`, `!defined(X)`, `X >= N`, joined by `||` and `&&`.
fn eval_condition(expr: &str, macros: &BTreeMap<String, i64>) -> bool {
    expr.split("||").any(|term| {
        term.split("&&").all(|atom| {
            let atom = atom.trim();
            let (negate, atom) = match atom.strip_prefix('!') {
                Some(a) => (true, a.trim()),
                None => (false, atom),
            };
            let value = if let Some(rest) = atom.strip_prefix("defined") {
                let name = rest.trim().trim_start_matches('(').trim_end_matches(')');
                macros.contains_key(name.trim())
            } else if let Some((name, n)) = atom.split_once(">=") {
                let n = parse_int(n).unwrap_or_else(|| panic!("moth.h: #if {expr}"));
                macros.get(name.trim()).copied().unwrap_or(0) >= n
            } else {
                panic!("moth.h: a preprocessor condition this parser does not know: #if {expr}")
            };
            value != negate
        })
    })
}

/// Keeps the lines a C99 compiler sees; records integer `#define`s.
fn preprocess(text: &str, constants: &mut BTreeMap<String, i64>) -> String {
    let mut macros = predefined();
    // (this branch active, some branch of this #if taken, parent active)
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|&(a, _)| a);
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        let Some(directive) = t.strip_prefix('#') else {
            if active(&stack) {
                out.push_str(line);
            }
            out.push('\n');
            continue;
        };
        out.push('\n');
        let directive = directive.trim();
        let (word, rest) = directive
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((directive, ""));
        match word {
            "ifndef" => {
                let v = !macros.contains_key(rest);
                stack.push((v, v));
            }
            "ifdef" => {
                let v = macros.contains_key(rest);
                stack.push((v, v));
            }
            "if" => {
                let v = eval_condition(rest, &macros);
                stack.push((v, v));
            }
            "else" => {
                let top = stack.last_mut().expect("#else without #if");
                *top = (!top.1, true);
            }
            "endif" => {
                stack.pop().expect("#endif without #if");
            }
            "define" if active(&stack) => {
                let (name, value) = rest
                    .split_once(char::is_whitespace)
                    .map(|(n, v)| (n, v.trim()))
                    .unwrap_or((rest, ""));
                let v = parse_int(value);
                if let Some(v) = v {
                    constants.insert(name.to_string(), v);
                }
                macros.insert(name.to_string(), v.unwrap_or(1));
            }
            "include" | "define" => {}
            _ => panic!("moth.h: unknown preprocessor directive #{directive}"),
        }
    }
    assert!(stack.is_empty(), "moth.h: unbalanced #if");
    out
}

fn tokenize(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(code[i..end].to_string());
        } else if "{}()[];,*=:-".contains(c) {
            out.push(c.to_string());
            chars.next();
        } else {
            panic!("moth.h: unexpected character {c:?} outside comments");
        }
    }
    out
}

const QUALIFIERS: &[&str] = &["MOTH_MUST_USE", "extern"];

struct Parser {
    t: Vec<String>,
    i: usize,
    h: Header,
}

impl Parser {
    fn peek(&self) -> &str {
        self.t.get(self.i).map(String::as_str).unwrap_or("")
    }
    fn next(&mut self) -> String {
        let t = self.t.get(self.i).cloned().unwrap_or_default();
        self.i += 1;
        t
    }
    fn expect(&mut self, want: &str) {
        let got = self.next();
        assert_eq!(got, want, "moth.h: expected `{want}` near token {}", self.i);
    }
    fn ident(&mut self) -> String {
        let t = self.next();
        assert!(
            t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'),
            "moth.h: expected a name, found `{t}`"
        );
        t
    }

    fn declaration(&mut self) {
        while QUALIFIERS.contains(&self.peek()) {
            self.next();
        }
        match self.peek() {
            "typedef" => self.typedef(),
            "enum" => self.enumeration(),
            _ => self.function(),
        }
    }

    /// `[const] name [const] {* [const]}`.
    fn base_type(&mut self) -> CType {
        let mut is_const = false;
        while self.peek() == "const" {
            self.next();
            is_const = true;
        }
        if matches!(self.peek(), "struct" | "enum") {
            self.next();
        }
        let name = self.ident();
        let mut ty = if name == "void" {
            CType::Void
        } else {
            CType::Named(name)
        };
        loop {
            match self.peek() {
                "const" => {
                    self.next();
                    is_const = true;
                }
                "*" => {
                    self.next();
                    ty = CType::Pointer {
                        pointee: Box::new(ty),
                        is_const,
                    };
                    is_const = false;
                }
                _ => return ty,
            }
        }
    }

    /// `( type name, ... )` or `(void)`.
    fn params(&mut self) -> Vec<CParam> {
        self.expect("(");
        let mut out = Vec::new();
        if self.peek() == "void" && self.t.get(self.i + 1).map(String::as_str) == Some(")") {
            self.next();
        }
        while self.peek() != ")" {
            let ty = self.base_type();
            let name = self.ident();
            out.push(CParam { name, ty });
            if self.peek() == "," {
                self.next();
            }
        }
        self.expect(")");
        out
    }

    fn function(&mut self) {
        let ret = self.base_type();
        let name = self.ident();
        let params = self.params();
        self.expect(";");
        self.h.functions.push(CFunction { name, ret, params });
    }

    fn typedef(&mut self) {
        self.expect("typedef");
        if self.peek() == "struct" {
            self.next();
            if self.peek() == "{" {
                self.next();
                let mut fields = Vec::new();
                while self.peek() != "}" {
                    let mut ty = self.base_type();
                    let name = self.ident();
                    if self.peek() == "[" {
                        self.next();
                        let n = self.next();
                        let len = parse_int(&n)
                            .or_else(|| self.h.constants.get(&n).copied())
                            .unwrap_or_else(|| panic!("moth.h: array length {n}"));
                        self.expect("]");
                        ty = CType::Array(Box::new(ty), len as usize);
                    }
                    self.expect(";");
                    fields.push(CParam { name, ty });
                }
                self.expect("}");
                let name = self.ident();
                self.expect(";");
                self.h.typedefs.insert(name, Typedef::Struct(fields));
            } else {
                let tag = self.ident();
                let name = self.ident();
                assert_eq!(tag, name, "moth.h: typedef struct {tag} {name}");
                self.expect(";");
                self.h.typedefs.entry(name).or_insert(Typedef::Opaque);
            }
            return;
        }
        let ret = self.base_type();
        if self.peek() == "(" {
            self.next();
            self.expect("*");
            let name = self.ident();
            self.expect(")");
            let params = self.params();
            self.expect(";");
            self.h.typedefs.insert(name, Typedef::FnPtr { ret, params });
        } else {
            let name = self.ident();
            self.expect(";");
            let enum_self = self
                .h
                .typedefs
                .get(&name)
                .is_some_and(|t| matches!(t, Typedef::Enum));
            if !(enum_self && ret == CType::Named(name.clone())) {
                self.h.typedefs.insert(name, Typedef::Alias(ret));
            }
        }
    }

    fn enumeration(&mut self) {
        self.expect("enum");
        let name = self.ident();
        if self.peek() == ":" {
            self.next();
            let base = self.ident();
            assert_eq!(base, "int32_t", "moth.h: enum {name} : {base}");
        }
        self.expect("{");
        let mut next_value = 0i64;
        while self.peek() != "}" {
            let item = self.ident();
            if self.peek() == "=" {
                self.next();
                let mut lit = self.next();
                if lit == "-" {
                    lit = format!("-{}", self.next());
                }
                next_value = parse_int(&lit).unwrap_or_else(|| panic!("moth.h: {item} = {lit}"));
            }
            self.h.constants.insert(item, next_value);
            next_value += 1;
            if self.peek() == "," {
                self.next();
            }
        }
        self.expect("}");
        self.expect(";");
        self.h.typedefs.entry(name).or_insert(Typedef::Enum);
    }
}
