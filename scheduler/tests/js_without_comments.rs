//! The comment stripper the build scripts share (`build-support/js_without_comments.rs`): what it
//! takes out, what it must leave alone, and the lines it refuses rather than guess at.

include!("../../build-support/js_without_comments.rs");

#[test]
fn drops_comment_lines_blank_lines_and_indentation() {
    let source = "// a comment\n/** a doc\n * comment\n */\nfunction f() {\n\n    return 1; // kept: after code\n}\n/* note */ const x = 2;\n";
    assert_eq!(
        js_without_comments(source).unwrap(),
        "function f() {\nreturn 1; // kept: after code\n}\nconst x = 2;\n"
    );
}

#[test]
fn keeps_template_literals_as_they_are() {
    let source = "const py = `\ndef f():\n    // not a comment here\n    return 1  # \\` escaped, still inside\n\n`;\n    // a comment again\nconst y = `one line`;\n";
    assert_eq!(
        js_without_comments(source).unwrap(),
        "const py = `\ndef f():\n    // not a comment here\n    return 1  # \\` escaped, still inside\n\n`;\nconst y = `one line`;\n"
    );
}

#[test]
fn refuses_a_template_that_may_open_inside_a_string_or_a_comment() {
    for source in ["const q = '`';\n", "x = 1; // press ` to go\n", "say(\"a ` b\");\n"] {
        let error = js_without_comments(source).expect_err(source);
        assert!(error.starts_with("line 1: a template literal opens after a quote or `//`"), "{error}");
    }
    assert!(js_without_comments("post({ text: 'x', body: `\n  kept\n` });\n").is_ok(), "quotes that close before it");
}
