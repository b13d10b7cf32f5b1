fn main() {
    println!("btm-agent");
}
