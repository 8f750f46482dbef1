//! From `run.command`, an ordinary shell command line, to the script the
//! shim hands to `/bin/sh -c`, so that the *app* is the process that gets
//! the stop signal and whose exit is recorded, not a shell waiting for it.
//!
//! Two things make that so:
//!
//! 1. **`exec` before the last command.** When the line ends with a simple
//!    command (`./server`, `cd sub && python3 -m http.server $PORT`,
//!    `A=1 ./server`, `echo start; exec ./server`), that command is run
//!    with `exec` (after its variable assignments: `A=1 exec ./server`), so
//!    the shell becomes the app: same pid, the process group's leader, its
//!    exit status is the app's own (a signal stays a signal). This changes
//!    nothing else: in a non-interactive shell, the last command's status is
//!    the script's status anyway. A line that already `exec`s, or whose last
//!    command is a shell builtin or keyword (`cd`, `wait`, `fi`, `done`,
//!    `}`...), a pipeline, a background job or a subshell, is left as it is.
//! 2. **A trap on the stop signal.** The stop signal goes to the whole
//!    process group. A shell that is still there (the line could not be
//!    rewritten, or the stop came while an earlier command ran) would die
//!    of it at once, and the shim, seeing its child gone, would SIGKILL the
//!    rest of the group in the middle of the app's graceful shutdown. With
//!    `trap exit SIG`, the shell waits for its foreground command to finish
//!    (POSIX defers traps until then) and exits with its status. A trapped
//!    signal is reset to its default in every program the shell starts, so
//!    the app still sees the signal as usual.
//!
//! The lexer below knows quotes, backslashes, comments, `$(...)` and
//! backquotes well enough to find the last command; when in doubt it leaves
//! the line alone, which is never wrong, only less exact.

/// The script for `/bin/sh -c`: see the module docs.
pub fn shell_script(command: &str, stop_signal: i32) -> String {
    let body = with_exec(command).unwrap_or_else(|| command.to_string());
    // On one line with the command, so the shell's messages still say
    // "line 1" for a one-line command.
    format!("trap exit {stop_signal}; {body}")
}

/// `command` with `exec ` inserted before its last command, or `None` when
/// it must be left as written.
pub fn with_exec(command: &str) -> Option<String> {
    let at = last_command_start(command)?;
    let mut out = String::with_capacity(command.len() + 5);
    out.push_str(&command[..at]);
    out.push_str("exec ");
    out.push_str(&command[at..]);
    Some(out)
}

/// Words of the shell that must not be `exec`ed: keywords, and builtins
/// that act on the shell itself (or have no program of their name).
const NOT_EXECABLE: &[&str] = &[
    "!", "{", "}", "[[", "]]", "if", "then", "else", "elif", "fi", "do", "done", "case", "esac",
    "while", "until", "for", "in", "function", "select", "time", "exec", "cd", "exit", "return",
    "wait", "trap", "export", "unset", "set", "shift", "read", "eval", ".", "source", ":", "break",
    "continue", "alias", "unalias", "ulimit", "umask", "local", "readonly", "command", "builtin",
    "jobs", "fg", "bg", "getopts", "hash", "type",
];

/// One word of the last segment: where it starts, and its text with
/// quoting removed (only used to recognize keywords and assignments).
struct Word {
    start: usize,
    /// The raw text of the word (quotes included).
    raw: String,
    /// Whether any part of it was quoted or escaped.
    quoted: bool,
}

/// Byte offset of the last simple command's first command word, when the
/// line ends with a simple command that can be `exec`ed.
fn last_command_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut i = 0;
    // The segment (between top-level `;`, `&&`, `||`, newlines) being read.
    let mut seg_words: Vec<Word> = Vec::new();
    let mut seg_simple = true;
    // The last non-blank segment, and the separator that ended it.
    let mut last: Option<(Vec<Word>, bool)> = None;
    let mut ended_by_and_or = false;
    let mut word: Option<Word> = None;

    fn end_word(word: &mut Option<Word>, words: &mut Vec<Word>) {
        if let Some(w) = word.take() {
            words.push(w);
        }
    }
    fn start_word(word: &mut Option<Word>, at: usize) -> &mut Word {
        word.get_or_insert_with(|| Word {
            start: at,
            raw: String::new(),
            quoted: false,
        })
    }

    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                let w = start_word(&mut word, i);
                w.quoted = true;
                let n = char_len(line, i + 1);
                if n == 0 {
                    // A trailing backslash: leave the line alone.
                    return None;
                }
                w.raw.push_str(&line[i..i + 1 + n]);
                i += 1 + n;
            }
            b'\'' => {
                let close = line[i + 1..].find('\'')? + i + 1;
                let w = start_word(&mut word, i);
                w.quoted = true;
                w.raw.push_str(&line[i..=close]);
                i = close + 1;
            }
            b'"' => {
                let close = skip_double_quoted(bytes, i + 1)?;
                let w = start_word(&mut word, i);
                w.quoted = true;
                w.raw.push_str(&line[i..=close]);
                i = close + 1;
            }
            b'`' => {
                let close = skip_backquoted(bytes, i + 1)?;
                let w = start_word(&mut word, i);
                w.quoted = true;
                w.raw.push_str(&line[i..=close]);
                i = close + 1;
            }
            b'$' if bytes.get(i + 1) == Some(&b'(') || bytes.get(i + 1) == Some(&b'{') => {
                let close = skip_nested(bytes, i + 2, bytes[i + 1])?;
                let w = start_word(&mut word, i);
                w.quoted = true;
                w.raw.push_str(&line[i..=close]);
                i = close + 1;
            }
            b'#' if word.is_none() => {
                // A comment, to the end of the line.
                i = line[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b' ' | b'\t' => {
                end_word(&mut word, &mut seg_words);
                i += 1;
            }
            b'\n' | b';' => {
                if c == b';' && bytes.get(i + 1) == Some(&b';') {
                    // `;;` only appears inside `case`.
                    seg_simple = false;
                }
                end_word(&mut word, &mut seg_words);
                if !seg_words.is_empty() {
                    last = Some((std::mem::take(&mut seg_words), seg_simple));
                    ended_by_and_or = false;
                } else if ended_by_and_or && c == b';' {
                    return None; // `a && ;` is a syntax error
                }
                seg_simple = true;
                i += 1;
            }
            b'&' | b'|' => {
                let double = bytes.get(i + 1) == Some(&c);
                let redirect = c == b'&'
                    && word
                        .as_ref()
                        .is_some_and(|w| w.raw.ends_with('>') || w.raw.ends_with('<'));
                let pipe_redirect =
                    c == b'|' && word.as_ref().is_some_and(|w| w.raw.ends_with('>'));
                if redirect || pipe_redirect {
                    // `2>&1`, `<&3`, `>|file`: part of a redirection word.
                    let w = start_word(&mut word, i);
                    w.raw.push(c as char);
                    i += 1;
                } else if double {
                    end_word(&mut word, &mut seg_words);
                    if seg_words.is_empty() {
                        return None;
                    }
                    last = Some((std::mem::take(&mut seg_words), seg_simple));
                    ended_by_and_or = true;
                    seg_simple = true;
                    i += 2;
                } else {
                    // A pipe or a background job: not a simple command.
                    end_word(&mut word, &mut seg_words);
                    seg_simple = false;
                    i += 1;
                }
            }
            b'(' | b')' => {
                end_word(&mut word, &mut seg_words);
                seg_simple = false;
                i += 1;
            }
            b'<' if bytes.get(i + 1) == Some(&b'<') => {
                // A here-document: its body follows on the next lines.
                return None;
            }
            _ => {
                let n = char_len(line, i).max(1);
                let w = start_word(&mut word, i);
                w.raw.push_str(&line[i..i + n]);
                i += n;
            }
        }
    }
    end_word(&mut word, &mut seg_words);
    let (words, simple) = if seg_words.is_empty() {
        if ended_by_and_or {
            return None;
        }
        last?
    } else {
        (seg_words, seg_simple)
    };
    if !simple {
        return None;
    }
    let first = words.iter().find(|w| !is_assignment(w))?;
    if !first.quoted && NOT_EXECABLE.contains(&first.raw.as_str()) {
        return None;
    }
    if first.raw.starts_with(['<', '>'])
        || (first.raw.chars().next()?.is_ascii_digit() && first.raw.contains(['<', '>']))
    {
        // A redirection before the command: `exec` would apply it to the
        // shell and still run the command; leave such lines as written.
        return None;
    }
    Some(first.start)
}

fn is_assignment(w: &Word) -> bool {
    let Some((name, _)) = w.raw.split_once('=') else {
        return false;
    };
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Length in bytes of the character at `i` (0 at the end).
fn char_len(s: &str, i: usize) -> usize {
    s.get(i..)
        .and_then(|r| r.chars().next())
        .map_or(0, char::len_utf8)
}

/// Index of the `"` closing a double-quoted string whose body starts at `i`.
fn skip_double_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            b'`' => i = skip_backquoted(b, i + 1)? + 1,
            b'$' if matches!(b.get(i + 1), Some(b'(' | b'{')) => {
                i = skip_nested(b, i + 2, b[i + 1])? + 1;
            }
            _ => i += 1,
        }
    }
    None
}

fn skip_backquoted(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'`' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Index of the bracket closing `$(` or `${` (`open` is `(` or `{`), whose
/// body starts at `i`, minding quotes and nesting.
fn skip_nested(b: &[u8], mut i: usize, open: u8) -> Option<usize> {
    let close = if open == b'(' { b')' } else { b'}' };
    let mut depth = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'\'' => {
                i += 1;
                while *b.get(i)? != b'\'' {
                    i += 1;
                }
            }
            b'"' => i = skip_double_quoted(b, i + 1)?,
            b'`' => i = skip_backquoted(b, i + 1)?,
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_simple_command_gets_exec() {
        for (line, want) in [
            ("./server", "exec ./server"),
            ("  ./server --port $PORT", "  exec ./server --port $PORT"),
            (
                "cd sub && python3 -m http.server $PORT",
                "cd sub && exec python3 -m http.server $PORT",
            ),
            ("A=1 ./server", "A=1 exec ./server"),
            ("A=1 B=\"x y\" ./server", "A=1 B=\"x y\" exec ./server"),
            (
                "echo start; sleep 1; ./server",
                "echo start; sleep 1; exec ./server",
            ),
            (
                "./migrate || true; ./server;",
                "./migrate || true; exec ./server;",
            ),
            ("./a\n./b\n", "./a\nexec ./b\n"),
            ("./server 2>&1", "exec ./server 2>&1"),
            (
                "./server >>log 2>&1 # keep",
                "exec ./server >>log 2>&1 # keep",
            ),
            (
                "./server --name \"a; b\" 'c && d'",
                "exec ./server --name \"a; b\" 'c && d'",
            ),
            (
                "./server --id $(hostname -s)",
                "exec ./server --id $(hostname -s)",
            ),
            ("./server ${ARGS:-x}", "exec ./server ${ARGS:-x}"),
            (
                "make && ./server -- a\\;b",
                "make && exec ./server -- a\\;b",
            ),
            ("[ -f x ] && ./server", "[ -f x ] && exec ./server"),
            ("\"./my server\"", "exec \"./my server\""),
            ("./a && ./b || ./c", "./a && ./b || exec ./c"),
        ] {
            assert_eq!(with_exec(line).as_deref(), Some(want), "{line}");
        }
    }

    #[test]
    fn lines_that_cannot_be_exec_ed_are_left_alone() {
        for line in [
            "echo start; exec ./server",
            "exec ./server",
            "./server | tee log",
            "./server &",
            "(cd sub; ./server)",
            "{ ./a; ./b; }",
            "if true; then ./server; fi",
            "while true; do ./server; done",
            "./a; cd sub",
            "./a; wait",
            "A=1",
            "./a &&",
            "",
            "   ",
            "# only a comment",
            "echo 'unterminated",
            "cat <<EOF\nhi\nEOF",
            "case x in x) ./a;; esac",
            ">log ./server",
            "./a; ./b \\",
        ] {
            assert_eq!(with_exec(line), None, "{line:?}");
        }
    }

    #[test]
    fn the_script_traps_the_stop_signal() {
        assert_eq!(
            shell_script("cd sub && ./server", 15),
            "trap exit 15; cd sub && exec ./server"
        );
        assert_eq!(shell_script("./a | ./b", 2), "trap exit 2; ./a | ./b");
    }
}
