//! Splitting SSE text into lines and fields (WHATWG rules: CRLF, LF or lone CR).

/// One line: its byte offset, its text and the line break that ends it
/// (`""` for an unterminated final line).
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub start: usize,
    pub text: &'a str,
    pub brk: &'a str,
}

impl<'a> Line<'a> {
    pub fn is_blank(&self) -> bool {
        self.text.is_empty()
    }

    /// Offset just past the line break.
    pub fn end(&self) -> usize {
        self.start + self.text.len() + self.brk.len()
    }

    /// `(name, value, value_offset)` of a field line; `None` for blank lines
    /// and comments. One space after the colon is not part of the value.
    pub fn field(&self) -> Option<(&'a str, &'a str, usize)> {
        let text = self.text;
        if text.is_empty() || text.starts_with(':') {
            return None;
        }
        match text.find(':') {
            None => Some((text, "", self.start + text.len())),
            Some(colon) => {
                let mut at = colon + 1;
                if text.as_bytes().get(at) == Some(&b' ') {
                    at += 1;
                }
                Some((&text[..colon], &text[at..], self.start + at))
            }
        }
    }

    /// The value after the colon, spaces included, when this is a `name` field.
    pub fn raw_value_of(&self, name: &str) -> Option<(&'a str, usize)> {
        let rest = self.text.strip_prefix(name)?;
        if rest.is_empty() {
            return Some(("", self.start + self.text.len()));
        }
        let value = rest.strip_prefix(':')?;
        Some((value, self.start + name.len() + 1))
    }
}

/// Iterator over the lines of `text`; an empty remainder is no line.
pub struct Lines<'a> {
    text: &'a str,
    pos: usize,
}

pub fn lines(text: &str) -> Lines<'_> {
    Lines { text, pos: 0 }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        if start >= bytes.len() {
            return None;
        }
        let cut = memchr::memchr2(b'\r', b'\n', &bytes[start..]).map(|p| start + p);
        let (end, brk_len) = match cut {
            None => (bytes.len(), 0),
            Some(i) if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') => (i, 2),
            Some(i) => (i, 1),
        };
        self.pos = end + brk_len;
        Some(Line { start, text: &self.text[start..end], brk: &self.text[end..end + brk_len] })
    }
}

/// Splits `data` on CRLF, LF or CR the way `encode_event` needs: `""` is one
/// empty line and a trailing break leaves an empty last line.
pub fn split_data(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        let bytes = text.as_bytes();
        match bytes.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                rest = None;
                Some(text)
            }
            Some(i) => {
                let skip = if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
        }
    })
}
