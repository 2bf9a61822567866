//! A Julia lexer, enough for tests/julia_check/julia_source.rs: names,
//! macro calls, numbers, operators, line breaks and comments as tokens;
//! strings (with `$(...)` interpolation, nested strings inside it), triple-
//! quoted strings, command literals, characters (told apart from the
//! adjoint `'`) and nested `#= =#` comments as single tokens, so that code
//! inside them is never mistaken for calls.

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    /// `@name` (a macro call).
    Macro(String),
    Num(String),
    /// A string literal's raw text (without its quotes).
    Str(String),
    Punct(String),
    Comment(String),
    Newline,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

pub fn lex(text: &str) -> Vec<Token> {
    let mut lx = Lexer {
        c: text.chars().collect(),
        i: 0,
        line: 1,
        out: Vec::new(),
    };
    lx.run();
    lx.out
}

struct Lexer {
    c: Vec<char>,
    i: usize,
    line: usize,
    out: Vec<Token>,
}

fn ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}
fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '!'
}

impl Lexer {
    fn at(&self, k: usize) -> char {
        self.c.get(self.i + k).copied().unwrap_or('\0')
    }
    fn push(&mut self, tok: Tok, line: usize) {
        self.out.push(Token { tok, line });
    }
    fn bump(&mut self) -> char {
        let c = self.at(0);
        if c == '\n' {
            self.line += 1;
        }
        self.i += 1;
        c
    }

    fn run(&mut self) {
        while self.i < self.c.len() {
            let c = self.at(0);
            let line = self.line;
            if c == '\n' {
                self.bump();
                self.push(Tok::Newline, line);
            } else if c.is_whitespace() {
                self.bump();
            } else if c == '#' && self.at(1) == '=' {
                self.block_comment();
            } else if c == '#' {
                let mut s = String::new();
                while self.i < self.c.len() && self.at(0) != '\n' {
                    s.push(self.bump());
                }
                self.push(Tok::Comment(s), line);
            } else if c == '"' || c == '`' {
                let s = self.string(c);
                self.push(Tok::Str(s), line);
            } else if c == '\'' && !self.prev_is_value() {
                self.char_literal();
            } else if c == '@' && ident_start(self.at(1)) {
                self.bump();
                let name = self.word();
                self.push(Tok::Macro(name), line);
            } else if ident_start(c) {
                let name = self.word();
                self.push(Tok::Ident(name), line);
            } else if c.is_ascii_digit() {
                let mut s = String::new();
                while self.at(0).is_ascii_alphanumeric()
                    || self.at(0) == '_'
                    || (self.at(0) == '.' && self.at(1).is_ascii_digit())
                {
                    s.push(self.bump());
                }
                self.push(Tok::Num(s), line);
            } else {
                let three: String = self.c[self.i..(self.i + 3).min(self.c.len())]
                    .iter()
                    .collect();
                let op = [
                    "...", "::", "=>", "->", "==", "<:", ">=", "<=", "!=", "&&", "||",
                ]
                .into_iter()
                .find(|op| three.starts_with(op))
                .map(str::to_string)
                .unwrap_or_else(|| c.to_string());
                for _ in 0..op.chars().count() {
                    self.bump();
                }
                self.push(Tok::Punct(op), line);
            }
        }
    }

    fn word(&mut self) -> String {
        let mut s = String::new();
        while ident_char(self.at(0)) {
            s.push(self.bump());
        }
        s
    }

    /// Whether a `'` here is the adjoint operator rather than a character.
    fn prev_is_value(&self) -> bool {
        match self.out.last().map(|t| &t.tok) {
            Some(Tok::Ident(_)) | Some(Tok::Num(_)) => self.c[self.i - 1] != ' ',
            Some(Tok::Punct(p)) => [")", "]", "}", "'"].contains(&p.as_str()),
            _ => false,
        }
    }

    fn block_comment(&mut self) {
        let mut depth = 0;
        while self.i < self.c.len() {
            if self.at(0) == '#' && self.at(1) == '=' {
                depth += 1;
                self.bump();
                self.bump();
            } else if self.at(0) == '=' && self.at(1) == '#' {
                depth -= 1;
                self.bump();
                self.bump();
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    fn char_literal(&mut self) {
        let line = self.line;
        self.bump();
        let mut s = String::new();
        while self.i < self.c.len() && self.at(0) != '\'' {
            if self.at(0) == '\\' {
                s.push(self.bump());
            }
            s.push(self.bump());
        }
        self.bump();
        self.push(Tok::Str(s), line);
    }

    /// A `"..."`, `"""..."""` or backtick literal starting at the quote;
    /// `$(...)` interpolations are skipped with their own nesting.
    fn string(&mut self, q: char) -> String {
        let triple = self.at(1) == q && self.at(2) == q;
        let n = if triple { 3 } else { 1 };
        for _ in 0..n {
            self.bump();
        }
        let mut s = String::new();
        while self.i < self.c.len() {
            let c = self.at(0);
            if c == q && (!triple || (self.at(1) == q && self.at(2) == q)) {
                for _ in 0..n {
                    self.bump();
                }
                return s;
            }
            if c == '\\' {
                s.push(self.bump());
                s.push(self.bump());
            } else if c == '$' && self.at(1) == '(' {
                s.push(self.bump());
                self.interpolation(&mut s);
            } else {
                s.push(self.bump());
            }
        }
        panic!("unterminated string literal")
    }

    fn interpolation(&mut self, s: &mut String) {
        let mut depth = 0;
        while self.i < self.c.len() {
            let c = self.at(0);
            if c == '"' {
                let inner = self.string('"');
                s.push_str(&inner);
                continue;
            }
            s.push(self.bump());
            if c == '(' {
                depth += 1;
            } else if c == ')' {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }
}
