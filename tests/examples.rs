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
fn lstm_from_equations_fails_when_undertrained() {
    assert!(
        fails("lstm_from_equations", &["--epochs", "10"]),
        "ten epochs passed the check"
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
    assert!(
        fails("text_rnn", &["--epochs", "1"]),
        "one epoch passed the check"
    );
}

/// Whether the example exits with an error for these arguments.
fn fails(name: &str, args: &[&str]) -> bool {
    let output = Command::new(example(name))
        .args(args)
        .output()
        .expect("runs");
    !output.status.success()
}

#[test]
fn pos_tagger_tags_the_sentence_with_lstm_and_gru() {
    for cell in ["lstm", "gru"] {
        let out = run("pos_tagger", &["--cell", cell]);
        assert!(
            out.contains("The dog ate the apple -> DET NN V DET NN"),
            "{out}"
        );
        assert!(out.contains("after training"), "{out}");
    }
    assert!(
        fails("pos_tagger", &["--epochs", "1"]),
        "one epoch passed the check"
    );
}

#[test]
fn char_rnn_generates_the_sentence() {
    let out = run("char_rnn", &["--epochs", "500"]);
    assert!(
        out.contains("generated: hello pytorch. how long can a rnn cell remember?\n"),
        "{out}"
    );
    assert!(
        fails("char_rnn", &["--epochs", "5"]),
        "five epochs passed the check"
    );
    assert!(
        fails("char_rnn", &["--text", "Hello"]),
        "an upper-case text was accepted"
    );
}

#[test]
fn char_rnn_batched_three_layer_lstm_decodes_the_sentence() {
    let out = run(
        "char_rnn",
        &[
            "--cell", "lstm", "--layers", "3", "--batch", "5", "--epochs", "300",
        ],
    );
    assert!(
        out.contains(
            "decoded: hello pytorch. how long can a rnn cell remember? show me your limit!1"
        ),
        "{out}"
    );
}

#[test]
fn packed_bidirectional_shapes_and_states_check_out() {
    let out = run(
        "packed_bidirectional",
        &["--hidden", "48", "--embedding", "16"],
    );
    for line in [
        "output (20, 10, 48)",
        "h_n    (1, 10, 48)",
        "output (20, 10, 96)",
        "h_n    (4, 10, 48)",
        "c_n    (4, 10, 48)",
        "every final state is the state at its sequence's length",
    ] {
        assert!(out.contains(line), "missing `{line}` in\n{out}");
    }
}

#[test]
fn custom_cells_learn_the_recall_task_with_exact_gradients() {
    let out = run("custom_cell", &[]);
    for cell in [
        "LSTM (built-in)",
        "peephole LSTM",
        "minimal gated unit",
        "coupled-gate LSTM",
        "update-gate RNN",
    ] {
        assert!(out.contains(cell), "missing `{cell}` in\n{out}");
    }
    assert!(
        fails("custom_cell", &["--epochs", "20"]),
        "20 epochs passed the check"
    );
}

#[test]
fn shakespeare_trains_saves_loads_and_generates() {
    let dir = std::env::temp_dir().join(format!("rnn-shakespeare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (checkpoint, plot) = (dir.join("model.safetensors"), dir.join("loss.png"));
    // A small model, briefly trained: the held-out loss must still fall well below
    // uniform guessing (ln 65 = 4.17 nats).
    let out = run(
        "shakespeare",
        &[
            "--cell",
            "lstm",
            "--steps",
            "60",
            "--lr",
            "0.01",
            "--hidden",
            "32",
            "--batch",
            "8",
            "--chunk",
            "50",
            "--report-every",
            "30",
            "--max-loss",
            "3.0",
            "--save",
            checkpoint.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert!(out.contains("held-out loss"), "{out}");
    let png = std::fs::read(&plot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the plot is not a PNG");

    let generated = run(
        "shakespeare",
        &[
            "--load",
            checkpoint.to_str().unwrap(),
            "--generate",
            "120",
            "--prime",
            "ROMEO:",
        ],
    );
    assert!(
        generated.contains("Lstm × 2 layers, hidden 32"),
        "{generated}"
    );
    let text = generated
        .split_once("ROMEO:")
        .map(|(_, rest)| rest)
        .unwrap_or("");
    assert!(text.chars().count() >= 120, "{generated}");

    assert!(fails(
        "shakespeare",
        &["--steps", "3", "--hidden", "8", "--batch", "2", "--chunk", "20"]
    ));
    assert!(fails(
        "shakespeare",
        &[
            "--load",
            checkpoint.to_str().unwrap(),
            "--generate",
            "5",
            "--prime",
            "é"
        ]
    ));
    std::fs::remove_dir_all(&dir).unwrap();
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
