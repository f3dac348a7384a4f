//! Reading an agent program's output line by line without trusting it: a line is read
//! only up to a limit, so a program that never prints a newline cannot make the service
//! buffer without bound.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest line accepted from an agent program (ACP messages, `command` output).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the agent program wrote a line longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("reading the agent program's output: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next line into `line` (cleared first, without its newline). `Ok(false)` at
/// the end of the stream with nothing read. A line longer than `limit` bytes is an error;
/// the reader is then left inside that line.
pub async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, LineError> {
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let content = newline.unwrap_or(available.len());
        if line.len() + content > limit {
            return Err(LineError::TooLong { limit });
        }
        line.extend_from_slice(&available[..content]);
        let used = newline.map_or(content, |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

/// Skips to just after the next newline (or the end), keeping nothing: for a stream
/// where one overlong line may be dropped and the next ones still read.
pub async fn skip_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let all = available.len();
                reader.consume(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_without_their_newlines() {
        let mut input: &[u8] = b"one\n\ntwo\nlast";
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line(&mut input, &mut line, 16).await.unwrap() {
            lines.push(String::from_utf8(line.clone()).unwrap());
        }
        assert_eq!(lines, ["one", "", "two", "last"]);
    }

    #[tokio::test]
    async fn a_line_past_the_limit_is_refused_without_being_kept() {
        let long = format!("{}\nnext\n", "x".repeat(100));
        // A small buffer, as a pipe delivers a long line in many reads.
        let mut input = tokio::io::BufReader::with_capacity(8, long.as_bytes());
        let mut line = Vec::new();
        let error = read_line(&mut input, &mut line, 64).await.unwrap_err();
        assert!(matches!(error, LineError::TooLong { limit: 64 }), "{error}");
        assert!(line.len() <= 64, "kept {} bytes", line.len());
        skip_line(&mut input).await.unwrap();
        assert!(read_line(&mut input, &mut line, 64).await.unwrap());
        assert_eq!(line, b"next");
        let exact = format!("{}\n", "y".repeat(64));
        assert!(read_line(&mut exact.as_bytes(), &mut line, 64).await.unwrap(), "exactly the limit is fine");
    }
}
