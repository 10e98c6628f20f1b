//! Parsing the `--ptxas-options=-v` report in an NVRTC log.
//!
//! For each function ptxas compiles (NVRTC 13.0, sm_90) the log says:
//! ```text
//! ptxas info    : Compiling entry function 'bn_fwd_stats_bf16' for 'sm_90'
//! ptxas info    : Function properties for bn_fwd_stats_bf16
//! ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 72 registers, used 1 barriers, 16384 bytes smem
//! ptxas info    : Compile time = 67.113 ms
//! ```
//! A device function that was not inlined gets "Function properties" and
//! the stack line without "Compiling entry function". The "Used" line is a
//! comma-separated list whose items vary by version (`N bytes cmem[0]`,
//! `N bytes cumulative stack size`, ...): known items are read, others
//! ignored, so a newer ptxas does not break the parse.

/// What ptxas reports for one function.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntryStats {
    pub name: String,
    /// A `__global__` entry point (false: a non-inlined device function).
    pub is_entry: bool,
    pub registers: Option<u32>,
    pub barriers: Option<u32>,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Stack including callees (CUDA 13 reports it when non-zero).
    pub cumulative_stack_bytes: u32,
    /// Static shared memory.
    pub shared_mem_bytes: u32,
    pub compile_ms: Option<f64>,
}

impl EntryStats {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// Leading number of `s` ("72 registers" -> 72).
fn leading_u32(s: &str) -> Option<u32> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The number just before `suffix` in `s` ("16 bytes stack frame").
fn number_before(s: &str, suffix: &str) -> Option<u32> {
    let at = s.find(suffix)?;
    let head = s[..at].trim_end();
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

/// One `EntryStats` per function, in log order.
pub fn parse_ptxas_log(log: &str) -> Vec<EntryStats> {
    let mut out: Vec<EntryStats> = Vec::new();
    // Index of the function the next "Used"/"Compile time" line belongs to
    // (the last "Compiling entry function"), and of the one the next stack
    // line belongs to (the last "Function properties for").
    let (mut current_entry, mut current_props): (Option<usize>, Option<usize>) = (None, None);
    let index_of = |out: &mut Vec<EntryStats>, name: &str| -> usize {
        match out.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                out.push(EntryStats {
                    name: name.to_string(),
                    ..EntryStats::default()
                });
                out.len() - 1
            }
        }
    };
    for line in log.lines() {
        let line = line.trim();
        if !line.starts_with("ptxas") {
            continue;
        }
        // Text after the "ptxas info    :" / "ptxas         ." tag.
        let body = line.find([':', '.']).map_or(line, |i| line[i + 1..].trim());
        if let Some(rest) = body.strip_prefix("Compiling entry function") {
            let name = rest.split('\'').nth(1).unwrap_or("").to_string();
            let i = index_of(&mut out, &name);
            out[i].is_entry = true;
            current_entry = Some(i);
        } else if let Some(rest) = body.strip_prefix("Function properties for") {
            let name = rest.trim().trim_matches('\'');
            current_props = Some(index_of(&mut out, name));
        } else if body.contains("bytes stack frame") {
            if let Some(i) = current_props {
                let e = &mut out[i];
                e.stack_frame_bytes = number_before(body, "bytes stack frame").unwrap_or(0);
                e.spill_store_bytes = number_before(body, "bytes spill stores").unwrap_or(0);
                e.spill_load_bytes = number_before(body, "bytes spill loads").unwrap_or(0);
            }
        } else if let Some(rest) = body.strip_prefix("Used") {
            let Some(i) = current_entry else { continue };
            let e = &mut out[i];
            for item in rest.split(',').map(str::trim) {
                if item.ends_with("registers") {
                    e.registers = leading_u32(item);
                } else if let Some(b) = item.strip_prefix("used") {
                    if b.trim_end().ends_with("barriers") {
                        e.barriers = leading_u32(b);
                    }
                } else if item.ends_with("bytes smem") {
                    e.shared_mem_bytes = leading_u32(item).unwrap_or(0);
                } else if item.ends_with("bytes cumulative stack size") {
                    e.cumulative_stack_bytes = leading_u32(item).unwrap_or(0);
                }
            }
        } else if let Some(rest) = body.strip_prefix("Compile time =") {
            if let Some(i) = current_entry {
                out[i].compile_ms = rest.trim().trim_end_matches("ms").trim().parse().ok();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim from NVRTC 13.0.88 (bn1d_relu.cu before launch bounds were
    /// fixed), plus a non-inlined device function as older versions print.
    const LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'bn1d_relu_bwd_bf16' for 'sm_90'
ptxas info    : Function properties for bn1d_relu_bwd_bf16
ptxas         .     16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 16 bytes cumulative stack size, 24576 bytes smem
ptxas info    : Compile time = 128.481 ms
ptxas info    : Function properties for _Z6helperPf
ptxas         .     8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'add_f32' for 'sm_90'
ptxas info    : Function properties for add_f32
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 0 barriers, 384 bytes cmem[0]
ptxas info    : Compile time = 56.588 ms
";

    #[test]
    fn parses_entries_and_device_functions() {
        let s = parse_ptxas_log(LOG);
        assert_eq!(s.len(), 3, "{s:#?}");
        let bwd = &s[0];
        assert_eq!(bwd.name, "bn1d_relu_bwd_bf16");
        assert!(bwd.is_entry);
        assert_eq!(bwd.registers, Some(64));
        assert_eq!(bwd.barriers, Some(1));
        assert_eq!(bwd.stack_frame_bytes, 16);
        assert_eq!((bwd.spill_store_bytes, bwd.spill_load_bytes), (12, 12));
        assert!(bwd.spills());
        assert_eq!(bwd.cumulative_stack_bytes, 16);
        assert_eq!(bwd.shared_mem_bytes, 24576);
        assert_eq!(bwd.compile_ms, Some(128.481));

        let helper = &s[1];
        assert_eq!(helper.name, "_Z6helperPf");
        assert!(!helper.is_entry);
        assert_eq!(helper.stack_frame_bytes, 8);
        assert_eq!(helper.registers, None);

        let add = &s[2];
        assert_eq!(add.name, "add_f32");
        assert!(add.is_entry && !add.spills());
        assert_eq!(add.registers, Some(22));
        assert_eq!(add.shared_mem_bytes, 0);
        assert_eq!(add.stack_frame_bytes, 0);
    }

    #[test]
    fn ignores_unrelated_lines_and_empty_logs() {
        assert!(parse_ptxas_log("").is_empty());
        let s = parse_ptxas_log(
            "kernel.cu(3): warning: unused variable\nptxas info    : 0 bytes gmem\n",
        );
        assert!(s.is_empty());
    }

    #[test]
    fn number_helpers() {
        assert_eq!(leading_u32(" 72 registers"), Some(72));
        assert_eq!(leading_u32("registers"), None);
        assert_eq!(
            number_before(
                "16 bytes stack frame, 4 bytes spill stores",
                "bytes spill stores"
            ),
            Some(4)
        );
        assert_eq!(number_before("no number here", "here"), None);
    }
}
