"""``piccolo-build vm-test``: the acceptance scenarios in QEMU virtual machines (docs/vm-test.md).

- :mod:`.disk`: Flatcar's disk layout, its slot bits, and GRUB's ``gptprio`` played between boots;
- :mod:`.kernel`, :mod:`.initrd`, :mod:`.guest`, :mod:`.standin`: the stand-in machine, built and cached;
- :mod:`.qemu`, :mod:`.qga`, :mod:`.accel`: one VM, its guest agent, the accelerator;
- :mod:`.machine`: a booted stand-in and the kola-style checks after every boot;
- :mod:`.scenarios`, :mod:`.runner`, :mod:`.report`: the scenarios, running them, JUnit and TAP;
- :mod:`.image`: the same harness around a real ``qemu_uefi`` image (``--image``).
"""
