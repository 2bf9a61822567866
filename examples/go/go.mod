module mothexample

go 1.19

require moth v0.0.0

// The binding is not published; use the copy in this repository.
replace moth => ../../bindings/go
