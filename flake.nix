{
  description = "SD.Next on a rented GPU: an OCI image with SD.Next (CUDA 12.8), a file manager, a web terminal and a log viewer behind one login, and a model provisioning tool";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05-small";
    pyproject-nix = {
      url = "github:nix-community/pyproject.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    uv2nix = {
      url = "github:pyproject-nix/uv2nix";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    pyproject-build-systems = {
      url = "github:pyproject-nix/build-system-pkgs";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.uv2nix.follows = "uv2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      pyproject-nix,
      uv2nix,
      pyproject-build-systems,
    }:
    let
      # The image is x86_64 only: uv.lock holds x86_64 wheels (torch with CUDA 12.8).
      system = "x86_64-linux";
      pkgs = import nixpkgs {
        inherit system;
        # The CUDA libraries in the nvidia-* wheels are unfree; nothing else here is.
        config.allowUnfree = true;
      };
      provision = pkgs.callPackage ./nix/provision.nix { };
      sdnext = pkgs.callPackage ./nix/sdnext {
        inherit uv2nix pyproject-nix pyproject-build-systems;
      };
      image = pkgs.callPackage ./nix/image.nix { inherit provision sdnext; };
    in
    {
      packages.${system} = {
        inherit provision sdnext image;
        default = image;
      };

      devShells.${system}.default = pkgs.callPackage ./nix/devshell.nix { };

      # callPackage adds `override` to an attribute set it returns: not a check.
      checks.${system} = removeAttrs (pkgs.callPackage ./nix/checks.nix { inherit provision; }) [
        "override"
        "overrideDerivation"
      ] // {
        inherit provision;
      };

      formatter.${system} = pkgs.nixfmt;
    };
}
