//! The `backtrack` binary: run, then turn the result into a documented exit code.

fn main() {
    std::process::exit(backtrack::main_entry());
}
