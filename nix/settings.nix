# The runtime defaults (nix/runtime/defaults.env) as Nix data: the image config reads ports and
# defaults from here, the runtime's init from the same file, so the two cannot drift. Pure Nix
# (builtins only, no nixpkgs): the test run evaluates it with `nix-instantiate --eval`.
let
  inherit (builtins)
    elemAt
    filter
    fromJSON
    isString
    listToAttrs
    match
    readFile
    replaceStrings
    split
    substring
    ;

  lines = filter (line: isString line && line != "" && substring 0 1 line != "#") (
    split "\n" (readFile ./runtime/defaults.env)
  );
  entry =
    line:
    let
      parts = match "([A-Z_]+)=(.*)" line;
    in
    {
      name = elemAt parts 0;
      value = elemAt parts 1;
    };
  env = listToAttrs (map entry lines);

  words = text: filter (word: isString word && word != "") (split " " text);
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  toUpper = replaceStrings lower upper;

  ports = map (service: {
    inherit service;
    external = fromJSON env."${toUpper service}_PORT";
    internal = fromJSON env."${toUpper service}_INTERNAL_PORT";
  }) (words env.PROXIED_SERVICES);
in
{
  inherit env ports;
  services = words env.SERVICES;
  # dockerTools' config.ExposedPorts: { "8010/tcp" = { }; ... }: the gateway's ports and SSH's.
  exposedPorts = listToAttrs (
    map
      (port: {
        name = "${toString port}/tcp";
        value = { };
      })
      (map (port: port.external) ports ++ [ (fromJSON env.SSH_PORT) ])
  );
}
