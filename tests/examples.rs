//! Every example runs and checks its own result: a broken example fails the tests.
//! `cargo test` builds the examples; this runs the binaries it built.

use std::path::PathBuf;
use std::process::Command;

/// The example binary built beside this test (`target/<profile>/examples/<name>`).
fn example(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("examples").join(name)
}

fn run(name: &str, args: &[&str]) -> String {
    let path = example(name);
    let output = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn lstm_from_equations_remembers_the_sentence() {
    let out = run("lstm_from_equations", &[]);
    assert!(
        out.contains(
            "decoded: hello pytorch. how long can a rnn cell remember? show me your limit!"
        ),
        "{out}"
    );
}

#[test]
fn text_rnn_predicts_every_third_word() {
    let out = run("text_rnn", &[]);
    for line in [
        "i like -> dog",
        "i love -> coffee",
        "i hate -> milk",
        "you like -> cat",
        "you love -> milk",
        "you hate -> coffee",
    ] {
        assert!(out.contains(line), "missing `{line}` in\n{out}");
    }
}

#[test]
fn text_rnn_fails_when_undertrained() {
    // The example's own check must be able to fail: one epoch cannot learn the words.
    let output = Command::new(example("text_rnn"))
        .args(["--epochs", "1"])
        .output()
        .expect("runs");
    assert!(
        !output.status.success(),
        "one epoch of training passed the check"
    );
}

#[test]
fn pytorch_parity_passes_every_fixture() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pytorch");
    let out = run("pytorch_parity", &[fixtures]);
    assert!(out.trim_end().ends_with("53 passed, 0 failed"), "{out}");
}

#[test]
fn throughput_reports_json() {
    let out = run(
        "throughput",
        &["--json", "--sizes", "tiny", "--cells", "lstm,mgu"],
    );
    assert!(
        out.starts_with("{\"rows\": [")
            && out.contains("\"cell\": \"mgu\"")
            && out.contains("fwdbwd_gflops"),
        "{out}"
    );
}
