# Every stack the Pulumi program has written settings for: reads
# <stacksDir>/<stack>.json (pure: the directory is part of the flake's
# source, which is why the program references the flake as `path:./nix`
# — a git flake would not see these untracked files) and returns
# { <stack> = params; ... } with params from ./params.nix.
#
# Pure, builtins only, like params.nix.
{
  stacksDir,
  params ? import ./params.nix,
}:
let
  inherit (builtins) attrNames filter listToAttrs map match readDir readFile fromJSON head;
  entries = readDir stacksDir;
  jsonFiles = filter (f: entries.${f} == "regular" && match ".+\\.json" f != null) (attrNames entries);
  load =
    file:
    let
      name = head (match "(.+)\\.json" file);
      json = fromJSON (readFile (stacksDir + "/${file}"));
      p = params json;
    in
    {
      inherit name;
      value =
        if (json.stack or name) != name then
          throw "nixspark: ${file} holds settings for stack \"${json.stack}\"; the file must be named after its stack"
        else
          p;
    };
in
listToAttrs (map load jsonFiles)
