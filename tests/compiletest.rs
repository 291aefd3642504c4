//! The compiler's messages: each mistake in `tests/ui/err` is an error at its own span
//! with the message in its `.stderr`; every cell in `tests/ui/ok` compiles and runs.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/err/*.rs");
    t.pass("tests/ui/ok/*.rs");
}
