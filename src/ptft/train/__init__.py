"""The one trainer both tracks use, its stopping rules, checkpoint/resume and the run store."""
