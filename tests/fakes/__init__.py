"""In-process stand-ins for the outside services Easel talks to, for tests."""
