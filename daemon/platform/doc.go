// Package platform holds the operating-system plumbing of cofferd that has no
// Coffer logic in it: hardening the process against leaking key material
// through core dumps and ptrace, and creating the unix socket the API is
// served on without trampling a running daemon.
package platform
