"""The test kit of the RTC backplane, for the tests, the benchmarks, `make chaos` and the compose
check: real processes, one way to assemble a stack, the contract's tokens and TURN credentials,
a Socket.IO test peer and the Twilio Tokens API stand-in.

Imported, never run. Modules: `processes`, `stack`, `contract`, `peer`, `twilio`.
"""
