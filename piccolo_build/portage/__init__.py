"""Reading a flatcar/scripts checkout's Gentoo repositories and board profiles, without portage.

The build decides from the checked-out tree which Python the board builds, whether every package our
ebuilds name exists there with stable keywords, and which packages of the sysext Flatcar does not
publish as binary packages (so they compile in the SDK). Portage itself is not available outside the
SDK, so this subpackage reads the same files it would, as far as those questions need:

- :mod:`.bash`: the variable assignments of an ebuild or ``make.defaults`` (quoted strings, arrays,
  ``+=``, ``${VAR}`` of earlier assignments, ``$(ver_cut ...)``), never by running bash;
- :mod:`.depstring`: the atoms a dependency string pulls in, with USE conditionals decided by the
  ebuild's IUSE defaults and ``|| ( ... )`` by its first choice;
- :mod:`.profile`: a board profile's stack (``parent`` files across repositories), its incremental
  ``USE``/``PYTHON_TARGETS``, ``use.mask``, ``package.mask`` and ``package.accept_keywords``;
- :mod:`.repo`: the ebuilds of coreos-overlay and portage-stable and the best visible version of an atom.

It answers conservatively where it cannot be exact (an eclass's own dependencies are not evaluated),
and every caller says what it read.
"""
