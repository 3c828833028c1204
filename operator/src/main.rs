//! The Acteon operator. Its controller arrives with the operator issue; today it only
//! reports that, so the workspace layout is in place.

fn main() {
    eprintln!("acteon-operator: the controller is not implemented yet (see the README)");
    std::process::exit(2);
}
