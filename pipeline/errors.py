"""Errors the generation side raises; each message is one line a user can act on."""


class EaselError(Exception):
    """Base of every error that is reported to a user as a plain message."""


class InvalidRequestError(EaselError, ValueError):
    """A request asks for something outside what the engine accepts (size, steps, sampler...).

    `en` is the message (also `str(error)`); `ko` is the same message in Korean for a chat user,
    None only where no chat user can see it (a programming mistake, a CLI-only check). The
    generation side has no catalogs, so the Korean text travels on the error itself.
    """

    def __init__(self, en: str, ko: str | None = None) -> None:
        super().__init__(en)
        self.en = en
        self.ko = ko

    def message(self, locale: str) -> str:
        """The message in `locale` ("ko", "ko-KR"...); English where no Korean was given."""
        return self.ko if self.ko is not None and locale.startswith("ko") else self.en


class UnknownSamplerError(InvalidRequestError):
    """A sampler name that is not one of the known A1111 names."""


class ModelLoadError(EaselError):
    """A model is missing, corrupt, of an unsupported kind, or unreachable offline."""


class GenerationOutOfMemory(EaselError):
    """The device ran out of memory during one job; the engine stays usable."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors can run to a page), or its type."""
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
