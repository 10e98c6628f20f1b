//! slmlp-gpu-check's CPU self-test (`--cpu-self-test`): the runner over every
//! registered parity case with both sides on the CPU. Both sides then run
//! the same code on the same inputs, so every case must match bit for bit;
//! this checks the cases and the runner without a GPU.

use serde_json::Value;
use std::process::Command;

const SEED: u64 = 7;

#[test]
fn cpu_self_test_passes_every_registered_case_exactly() {
    let out =
        std::env::temp_dir().join(format!("slmlp-gpu-check-self-test-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_slmlp-gpu-check"))
        .args(["--cpu-self-test", "--seed", &SEED.to_string()])
        .args(["--budget-s", "120", "--out"])
        .arg(&out)
        .output()
        .expect("slmlp-gpu-check runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(0), "{log}");

    let text = std::fs::read_to_string(out.join("result.json")).expect("result.json written");
    let result: Value = serde_json::from_str(&text).expect("result.json parses");
    assert_eq!(result["status"], "pass", "{log}");
    let rows = result["rows"].as_array().expect("rows");
    let expected = slmlp_benches::gpu_cases::all_cases(SEED).len();
    assert!(expected > 0);
    assert_eq!(rows.len(), expected, "one row per registered case\n{log}");
    for row in rows {
        assert_eq!(row["status"], "pass", "{row}");
        assert_eq!(row["max_rel_err"].as_f64(), Some(0.0), "{row}");
        let items = row["items"].as_array().expect("items");
        assert!(!items.is_empty(), "{row}");
        for item in items {
            assert_eq!(item["rel_err"].as_f64(), Some(0.0), "{row}");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}
