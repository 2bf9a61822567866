module moth

go 1.19
