package kmsv2

import "time"

// SetConnectionAgeForTest shortens the connection age limits; the result
// restores them.
func SetConnectionAgeForTest(age, grace time.Duration) (restore func()) {
	a, g := maxConnectionAge, maxConnectionAgeGrace
	maxConnectionAge, maxConnectionAgeGrace = age, grace
	return func() { maxConnectionAge, maxConnectionAgeGrace = a, g }
}
