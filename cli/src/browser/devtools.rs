//! The Chrome DevTools Protocol over `--remote-debugging-pipe`: the few methods `tessera worker`
//! needs, spoken as JSON messages each ended by a NUL byte, on two pipes Chromium inherits as file
//! descriptors 3 (commands to it) and 4 (answers and events from it).
//!
//! Why a pipe and not a port: a `--remote-debugging-port` would let every local user drive the
//! browser (and so run code as its user); a pipe is reachable only by its two ends. Why no CDP
//! crate: the maintained ones (`chromiumoxide`, `headless_chrome`) compile the whole generated
//! protocol, minutes on a small machine, for five methods and three events; and neither speaks the
//! pipe. When Chromium exits, the pipe closes: that, not a log line, is how its end is noticed.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

/// The file descriptor Chromium reads commands from (`--remote-debugging-pipe`).
pub(super) const COMMANDS_FD: i32 = 3;
/// The file descriptor Chromium writes answers and events to.
pub(super) const MESSAGES_FD: i32 = 4;

/// An event Chromium sent, with the session (attached page) it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Event {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

/// One message from Chromium: the answer to a command, or an event.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Incoming {
    Answer { id: u64, outcome: std::result::Result<Value, String> },
    Event(Event),
}

/// Parses one message (without its NUL terminator).
pub(super) fn parse_message(bytes: &[u8]) -> Result<Incoming> {
    let message: Value = serde_json::from_slice(bytes)
        .map_err(|error| Error::Browser(format!("DevTools sent a message that is not JSON: {error}")))?;
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        let outcome = match message.get("error") {
            Some(error) => Err(error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string()),
            None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
        };
        return Ok(Incoming::Answer { id, outcome });
    }
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Browser(format!("DevTools sent neither an answer nor an event: {message}")))?;
    Ok(Incoming::Event(Event {
        method: method.to_string(),
        params: message.get("params").cloned().unwrap_or(Value::Null),
        session_id: message.get("sessionId").and_then(Value::as_str).map(str::to_string),
    }))
}

/// The text of a `Runtime.consoleAPICalled` event: its string arguments joined by spaces, the way
/// the console shows them (`console.log('[tessera] ' + line)` has exactly one).
pub(super) fn console_text(event: &Event) -> Option<String> {
    if event.method != "Runtime.consoleAPICalled" {
        return None;
    }
    let words: Vec<&str> =
        event.params.get("args")?.as_array()?.iter().filter_map(|arg| arg.get("value")?.as_str()).collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The text of a `Runtime.exceptionThrown` event (an uncaught error in the page), for diagnosis.
pub(super) fn exception_text(event: &Event) -> Option<String> {
    if event.method != "Runtime.exceptionThrown" {
        return None;
    }
    let details = event.params.get("exceptionDetails")?;
    let text = details
        .pointer("/exception/description")
        .and_then(Value::as_str)
        .or_else(|| details.get("text").and_then(Value::as_str))?;
    Some(text.to_string())
}

/// A DevTools connection to one Chromium over its pipes.
pub(super) struct DevTools {
    commands: pipe::Sender,
    messages: BufReader<pipe::Receiver>,
    /// Bytes of a message being read (kept here so that reading is cancel safe).
    partial: Vec<u8>,
    /// Events that arrived while a command waited for its answer.
    queued: VecDeque<Event>,
    next_id: u64,
}

/// The browser's ends of the two pipes, to become its file descriptors 3 and 4.
pub(super) struct BrowserEnds {
    pub commands: OwnedFd,
    pub messages: OwnedFd,
}

impl DevTools {
    /// Makes the two pipes: our ends, non-blocking, for this connection; the browser's, blocking
    /// and close-on-exec (they are duplicated onto 3 and 4 in the child, which clears that).
    pub(super) fn pipes() -> Result<(DevTools, BrowserEnds)> {
        let io = |what: &str| Error::io(format!("making the DevTools {what} pipe"));
        let (commands, browser_commands) = pipe::pipe().map_err(io("command"))?;
        let (browser_messages, messages) = pipe::pipe().map_err(io("message"))?;
        let ends = BrowserEnds {
            commands: browser_commands.into_blocking_fd().map_err(io("command"))?,
            messages: browser_messages.into_blocking_fd().map_err(io("message"))?,
        };
        let devtools = DevTools {
            commands,
            messages: BufReader::new(messages),
            partial: Vec::new(),
            queued: VecDeque::new(),
            next_id: 1,
        };
        Ok((devtools, ends))
    }

    /// Sends a command without waiting for its answer (e.g. `Browser.close`, whose answer may
    /// never come); returns its id.
    pub(super) async fn send(&mut self, method: &str, params: Value, session_id: Option<&str>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session_id) = session_id {
            message["sessionId"] = json!(session_id);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .await
            .map_err(|error| Error::Browser(format!("cannot send {method} to the browser: {error}")))?;
        Ok(id)
    }

    /// Sends a command and waits for its answer; events that arrive meanwhile are kept for
    /// [`DevTools::next_event`].
    pub(super) async fn call(&mut self, method: &str, params: Value, session_id: Option<&str>) -> Result<Value> {
        let id = self.send(method, params, session_id).await?;
        loop {
            match self.read().await? {
                None => return Err(Error::Browser(format!("the browser closed while answering {method}"))),
                Some(Incoming::Answer { id: answered, outcome }) if answered == id => {
                    return outcome.map_err(|message| Error::Browser(format!("{method}: {message}")));
                }
                Some(Incoming::Answer { .. }) => {}
                Some(Incoming::Event(event)) => self.queued.push_back(event),
            }
        }
    }

    /// The next event; `None` once the browser closed its end (it exited). Cancel safe.
    pub(super) async fn next_event(&mut self) -> Result<Option<Event>> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.read().await? {
                None => return Ok(None),
                Some(Incoming::Event(event)) => return Ok(Some(event)),
                Some(Incoming::Answer { .. }) => {}
            }
        }
    }

    /// Reads one message; `None` at the end of the pipe. Cancel safe: bytes read so far stay in
    /// `partial`.
    async fn read(&mut self) -> Result<Option<Incoming>> {
        let read = self
            .messages
            .read_until(0, &mut self.partial)
            .await
            .map_err(|error| Error::Browser(format!("reading from the browser: {error}")))?;
        if read == 0 && self.partial.is_empty() {
            return Ok(None);
        }
        if self.partial.last() != Some(&0) {
            // The pipe ended inside a message: the browser died mid-write.
            self.partial.clear();
            return Ok(None);
        }
        self.partial.pop();
        let message = parse_message(&self.partial);
        self.partial.clear();
        message.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_errors_and_events() {
        assert_eq!(
            parse_message(br#"{"id":3,"result":{"targetId":"T"}}"#).unwrap(),
            Incoming::Answer { id: 3, outcome: Ok(json!({"targetId": "T"})) }
        );
        assert_eq!(
            parse_message(br#"{"id":4,"error":{"code":-32601,"message":"'X.y' wasn't found"}}"#).unwrap(),
            Incoming::Answer { id: 4, outcome: Err("'X.y' wasn't found".into()) }
        );
        assert_eq!(
            parse_message(br#"{"method":"Inspector.targetCrashed","params":{},"sessionId":"S"}"#).unwrap(),
            Incoming::Event(Event {
                method: "Inspector.targetCrashed".into(),
                params: json!({}),
                session_id: Some("S".into())
            })
        );
        assert!(parse_message(b"not json").is_err());
        assert!(parse_message(br#"{"params":{}}"#).is_err());
    }

    #[test]
    fn reads_the_text_of_console_calls() {
        let event = |method: &str, params: Value| Event { method: method.into(), params, session_id: None };
        let log = event(
            "Runtime.consoleAPICalled",
            json!({"type": "log", "args": [{"type": "string", "value": "[tessera] started with 2 sandbox(es)"}]}),
        );
        assert_eq!(console_text(&log).as_deref(), Some("[tessera] started with 2 sandbox(es)"));
        let two = event(
            "Runtime.consoleAPICalled",
            json!({"args": [{"type": "string", "value": "a"}, {"type": "number", "value": 1}, {"value": "b"}]}),
        );
        assert_eq!(console_text(&two).as_deref(), Some("a b"));
        assert_eq!(console_text(&event("Runtime.consoleAPICalled", json!({"args": []}))), None);
        assert_eq!(console_text(&event("Page.loadEventFired", json!({}))), None);
        let thrown = event(
            "Runtime.exceptionThrown",
            json!({"exceptionDetails": {"text": "Uncaught", "exception": {"description": "TypeError: x"}}}),
        );
        assert_eq!(exception_text(&thrown).as_deref(), Some("TypeError: x"));
    }
}
