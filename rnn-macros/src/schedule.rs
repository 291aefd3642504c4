pub fn schedule(_c: &crate::compile::Compiled) -> () {}
