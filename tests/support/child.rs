//! Child processes whose standard output a test reads while they run: the bridge's log lines,
//! realfw's ready line, Chromium's protocol messages. One thread per child reads the pipe to
//! its end, so that a child never blocks on a full pipe once nobody wants its output.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Spawns `command` with its stdout piped (panicking, naming `what`, if it cannot run), and a
/// thread that hands each record of that output ended by the byte `end` (without it) to
/// `each`, in order. Once `each` returns `false` the rest is read and dropped.
pub fn spawn_reading(
    command: &mut Command,
    what: &str,
    end: u8,
    mut each: impl FnMut(Vec<u8>) -> bool + Send + 'static,
) -> Child {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut wanted = true;
        loop {
            let mut record = Vec::new();
            match reader.read_until(end, &mut record) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if record.last() == Some(&end) {
                record.pop();
            }
            wanted = wanted && each(record);
        }
    });
    child
}

/// [`spawn_reading`] line by line: a `\r\n` ending is taken off too, invalid UTF-8 replaced.
pub fn spawn_reading_lines(
    command: &mut Command,
    what: &str,
    mut each: impl FnMut(String) -> bool + Send + 'static,
) -> Child {
    spawn_reading(command, what, b'\n', move |mut line| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        each(String::from_utf8_lossy(&line).into_owned())
    })
}
